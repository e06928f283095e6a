"""``voicegate load``: N concurrent real WebRTC calls on loopback, and a connect/talk/hang-up soak.

The server runs in its own process (started here unless ``--url`` is given) so that its CPU is measured alone;
the callers run in this process. Each caller says "stop" or "uh-huh" (espeak-ng) every few seconds while the bot
talks. Figures come from the server's ``/metrics`` and ``/proc``.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np

from voicegate.audio.pcm import resample
from voicegate.client import Caller, ClipTrack
from voicegate.tts.espeak import EspeakTts


@dataclass
class ServerProcess:
    """A ``voicegate serve`` child process."""

    proc: asyncio.subprocess.Process
    url: str

    def cpu_secs(self) -> float:
        """User + system CPU seconds used so far (Linux ``/proc``)."""
        fields = open(f"/proc/{self.proc.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        """Resident memory in MB."""
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    async def stop(self) -> None:
        """Terminate and wait."""
        self.proc.terminate()
        await asyncio.wait_for(self.proc.wait(), 20)


async def start_server(max_sessions: int) -> ServerProcess:
    """Start ``voicegate serve`` on a free loopback port and wait for ``/healthz``."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "VOICEGATE_MAX_SESSIONS": str(max_sessions), "VOICEGATE_OFFERS_PER_MINUTE": "0"}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "voicegate", "serve", "--port", str(port),
                                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            try:
                async with http.get(f"{url}/healthz") as res:
                    if res.status == 200:
                        return ServerProcess(proc, url)
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)
    proc.kill()
    raise RuntimeError("voicegate serve did not come up")


async def scrape(url: str, token: str | None = None) -> dict[str, float]:
    """The server's metrics as ``{series{labels}: value}``."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics", headers=headers) as res:
        text = await res.text()
    out = {}
    for line in text.splitlines():
        match = re.match(r"^([a-z_]+(?:\{[^}]*\})?) ([0-9.eE+-]+)$", line)
        if match:
            out[match.group(1)] = float(match.group(2))
    return out


def stage_cpu(before: dict[str, float], after: dict[str, float], elapsed_secs: float) -> dict[str, float]:
    """Compute per pipeline stage during the run (``voicegate_stage_cpu_seconds``), in % of one core."""
    out = {}
    for key, value in after.items():
        match = re.match(r'^voicegate_stage_cpu_seconds_total\{stage="([a-z]+)"\}$', key)
        if match:
            out[match.group(1)] = round(100 * (value - before.get(key, 0.0)) / max(elapsed_secs, 1e-9), 1)
    return out


def histogram_p95_ms(before: dict[str, float], after: dict[str, float], name: str) -> float | None:
    """The bucket bound under which 95 % of the run's observations of a histogram fell (ms)."""
    total = after.get(f"{name}_count", 0.0) - before.get(f"{name}_count", 0.0)
    if total <= 0:
        return None
    bounds = sorted((float(m.group(1)), key) for key in after
                    if (m := re.match(rf'^{name}_bucket\{{le="([0-9.]+)"\}}$', key)))
    for bound, key in bounds:
        if after[key] - before.get(key, 0.0) >= 0.95 * total:
            return round(bound * 1000, 1)
    return None


def late_fraction(metrics: dict[str, float], over_secs: float = 0.02) -> float:
    """Fraction of outbound frames produced more than ``over_secs`` late (from the histogram buckets)."""
    total = metrics.get("voicegate_playout_late_seconds_count", 0.0)
    within = metrics.get(f'voicegate_playout_late_seconds_bucket{{le="{over_secs}"}}', total)
    return (total - within) / total if total else 0.0


async def _phrases() -> list[np.ndarray]:
    out = []
    for phrase in ("stop", "uh-huh", "wait a second", "okay"):
        speech = await EspeakTts(sample_rate=16_000).synthesize(phrase)
        out.append(resample(speech.pcm, 16_000, 48_000))
    return out


async def _talk(caller: Caller, phrases: list[np.ndarray], secs: float, offset: int) -> None:
    await caller.wait_event("bot.speaking", timeout=15)
    deadline = time.monotonic() + secs
    i = offset
    while time.monotonic() < deadline:
        await asyncio.sleep(2.5 + (i % 3) * 0.7)
        caller.mic.schedule(phrases[i % len(phrases)], 0.0)
        i += 1


async def run_load(calls: int, secs: float, url: str | None = None) -> dict[str, Any]:
    """Open ``calls`` concurrent calls for ``secs`` seconds; return the figures."""
    server = None if url else await start_server(max(calls, 1))
    base = url or (server.url if server else "")
    phrases = await _phrases()
    callers = [Caller(base, ClipTrack(), keep_frames=False) for _ in range(calls)]
    try:
        await asyncio.gather(*(c.connect() for c in callers))
        before = await scrape(base)
        cpu0, t0 = (server.cpu_secs() if server else 0.0), time.monotonic()
        await asyncio.gather(*(_talk(c, phrases, secs, i) for i, c in enumerate(callers)))
        elapsed = time.monotonic() - t0
        cpu = (server.cpu_secs() - cpu0) if server else float("nan")
        metrics = await scrape(base)
    finally:
        await asyncio.gather(*(c.close() for c in callers), return_exceptions=True)
    pauses = [e["since_onset_ms"] for c in callers for e in c.events
              if e["type"] == "bot.paused" and "since_onset_ms" in e]
    verdicts = [e["ms_since_onset"] for c in callers for e in c.events if e["type"] == "gate.verdict"]
    result = {
        "calls": calls, "secs": round(elapsed, 1),
        "server_cpu_percent_of_one_core": round(100 * cpu / elapsed, 1),
        "per_call_cpu_percent": round(100 * cpu / elapsed / max(calls, 1), 1),
        "frames_late_over_20ms": round(late_fraction(metrics), 4),
        "time_to_pause_ms_p95": round(float(np.percentile(pauses, 95)), 1) if pauses else None,
        "verdict_ms_p50": round(float(np.percentile(verdicts, 50)), 1) if verdicts else None,
        "pauses": len(pauses),
        "server_rss_mb": round(server.rss_mb(), 1) if server else None,
        "stage_cpu_percent_of_one_core": stage_cpu(before, metrics, elapsed),
        "asr_queue_wait_ms_p95": histogram_p95_ms(before, metrics, "voicegate_asr_queue_seconds"),
    }
    if server:
        await server.stop()
    return result


async def run_soak(cycles: int, talk_secs: float = 1.5) -> dict[str, Any]:
    """``cycles`` sequential connect / talk / hang-up calls; resource figures at the start and the end."""
    server = await start_server(2)
    phrases = await _phrases()
    samples: list[dict[str, float]] = []
    try:
        for i in range(cycles):
            caller = Caller(server.url, ClipTrack(), keep_frames=False)
            await caller.connect()
            await caller.wait_event("bot.speaking", timeout=15)
            caller.mic.schedule(phrases[i % len(phrases)], 0.0)
            await asyncio.sleep(talk_secs)
            await caller.close()
            if i in (9, cycles // 2 - 1, cycles - 1):
                await asyncio.sleep(2.0)
                m = await scrape(server.url)
                samples.append({"cycle": i + 1, "rss_mb": round(m.get("process_resident_memory_bytes", 0) / 2**20, 1),
                                "fds": m.get("process_open_fds", 0), "threads": m.get("voicegate_threads", 0),
                                "tasks": m.get("voicegate_asyncio_tasks", 0),
                                "sessions": m.get("voicegate_active_sessions", 0)})
    finally:
        await server.stop()
    return {"cycles": cycles, "samples": samples}
