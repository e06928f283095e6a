"""``voicegate load``: N concurrent real calls on loopback, and a connect/talk/hang-up soak.

The server runs in its own process tree (started here unless ``--url`` is given; with ``--workers`` a supervisor and
its workers) and its CPU is measured alone, over the whole tree (with a supervisor, also the supervisor's own
share). The callers run in *other* processes (``CALLS_PER_PROCESS`` calls each) so that their cost is neither
charged to the server nor starves it unnoticed: the report gives the callers' CPU and the machine's idle share
beside the server's. In the default (barge-in) mode each caller says "stop", "uh-huh", "wait a second" or "okay"
(espeak-ng) every few seconds while the bot talks; with ``quiet`` the callers stay silent (the cost of listening).
Figures come from the server's ``/metrics`` and ``/proc``; the time to pause is also timed on the callers' side
(onset of speech in their stream to the first silent frame they receive, or to Twilio's ``clear``).

``transport``: ``webrtc`` (default: aiortc callers, about as costly as the server's side of the call), ``ws``
(``GET /ws``, 16 kHz PCM16) or ``twilio`` (``GET /twilio`` Media Streams): the socket callers
(:mod:`voicegate.load_socket`) cost a small fraction of an aiortc caller, so the server's capacity can be measured
on the machine that runs them.
"""

from __future__ import annotations

import asyncio
import json
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

CALLS_PER_PROCESS = 3
"""aiortc callers per caller process."""
SOCKET_CALLS_PER_PROCESS = 8
"""``/ws`` and ``/twilio`` callers per caller process (each costs a small fraction of an aiortc caller)."""
TRANSPORTS = ("webrtc", "ws", "twilio")
SERVER_START_SECS = 120.0
"""How long a server started here may take to answer ``/readyz`` (its models loaded) with 200."""


def _stat(pid: int) -> list[str]:
    return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()


def process_tree(pid: int) -> list[int]:
    """``pid`` and every live descendant (Linux ``/proc``)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents.setdefault(int(_stat(int(entry))[1]), []).append(int(entry))
            except (OSError, IndexError):
                continue
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(parents.get(current, []))
    return out


def tree_cpu_secs(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants."""
    return sum(own_cpu_secs(member) for member in process_tree(pid))


def own_cpu_secs(pid: int) -> float:
    """User + system CPU seconds of ``pid`` alone (0 once it is gone)."""
    try:
        fields = _stat(pid)
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_idle_secs() -> float:
    """Seconds every CPU of the machine has spent idle (or waiting for I/O) since boot (``/proc/stat``).

    Only the idle figure is exact on a tickless kernel: busy time is sampled at the timer tick and misses most of
    a process that wakes every 20 ms for a fraction of a tick (measured here: 14.6 % of a core counted busy while
    the processes' own run times, ``/proc/PID/schedstat``, added up to 29 %), so the machine's idle share is this
    over the elapsed time times the CPUs, not over the sum of the sampled columns."""
    values = [float(v) for v in open("/proc/stat").readline().split()[1:]]
    return (values[3] + values[4]) / os.sysconf("SC_CLK_TCK")


def machine_cpus() -> int:
    """The CPUs ``/proc/stat`` counts (those :func:`machine_idle_secs` sums over)."""
    with open("/proc/stat") as stat:
        return sum(1 for line in stat if line.startswith("cpu") and line[3:4].isdigit())


@dataclass
class ServerProcess:
    """A ``voicegate serve`` child process (with ``--workers``: a supervisor and its workers)."""

    proc: asyncio.subprocess.Process
    url: str

    @property
    def pid(self) -> int:
        """The server's root process (with ``--workers``: the supervisor)."""
        return self.proc.pid

    def cpu_secs(self) -> float:
        """User + system CPU seconds used so far by the server's whole process tree."""
        return tree_cpu_secs(self.proc.pid)

    def rss_mb(self) -> float:
        """Resident memory of the whole tree in MB."""
        return self.rss_of(self.proc.pid)

    @staticmethod
    def rss_of(pid: int) -> float:
        """Resident memory of ``pid``'s tree in MB."""
        total = 0.0
        for member in process_tree(pid):
            try:
                for line in open(f"/proc/{member}/status"):
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) / 1024
            except OSError:
                continue
        return total

    async def stop(self) -> None:
        """Terminate and wait."""
        self.proc.terminate()
        await asyncio.wait_for(self.proc.wait(), 20)


async def start_server(max_sessions: int, workers: int | None = None,
                       env: dict[str, str] | None = None) -> ServerProcess:
    """Start ``voicegate serve`` on a free loopback port and wait for ``/readyz`` (its models loaded; ``env``: added
    variables)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "VOICEGATE_MAX_SESSIONS": str(max_sessions), "VOICEGATE_OFFERS_PER_MINUTE": "0",
           **(env or {})}
    extra = ["--workers", str(workers)] if workers is not None else []
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "voicegate", "serve", "--port", str(port),
                                                *extra, env=env, stdout=subprocess.DEVNULL,
                                                stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SERVER_START_SECS
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline and proc.returncode is None:
            try:
                async with http.get(f"{url}/readyz") as res:
                    if res.status == 200:
                        return ServerProcess(proc, url)
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    if proc.returncode is None:
        proc.kill()
    raise RuntimeError(f"voicegate serve was not ready within {SERVER_START_SECS:.0f} s (exit code {proc.returncode})")


async def scrape(url: str, token: str | None = None) -> dict[str, float]:
    """The server's metrics as ``{series{labels}: value}``, summed over workers (their ``worker`` label dropped)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics", headers=headers) as res:
        text = await res.text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r"^([a-z_]+(?:\{[^}]*\})?) ([0-9.eE+-]+)$", line)
        if match:
            key = re.sub(r'worker="\d+",?', "", match.group(1)).replace("{}", "")
            out[key] = out.get(key, 0.0) + float(match.group(2))
    return out


def server_commits(metrics: dict[str, float]) -> list[str]:
    """The commits the server's processes report (``voicegate_build_info``): one, unless its workers run different
    code."""
    return sorted({m.group(1) for key in metrics
                   if (m := re.match(r'^voicegate_build_info\{.*commit="([^"]*)".*\}$', key))})


def stage_cpu(before: dict[str, float], after: dict[str, float], elapsed_secs: float) -> dict[str, float]:
    """Compute per pipeline stage during the run (``voicegate_stage_cpu_seconds``), in % of one core."""
    out = {}
    for key, value in after.items():
        match = re.match(r'^voicegate_stage_cpu_seconds_total\{stage="([a-z]+)"\}$', key)
        if match:
            out[match.group(1)] = round(100 * (value - before.get(key, 0.0)) / max(elapsed_secs, 1e-9), 1)
    return out


def histogram_quantile_ms(before: dict[str, float], after: dict[str, float], name: str, q: float) -> float | None:
    """The bucket bound under which the fraction ``q`` of the run's observations of a histogram fell (ms)."""
    total = after.get(f"{name}_count", 0.0) - before.get(f"{name}_count", 0.0)
    if total <= 0:
        return None
    bounds = sorted((float(m.group(1)), key) for key in after
                    if (m := re.match(rf'^{name}_bucket\{{le="([0-9.]+)"\}}$', key)))
    for bound, key in bounds:
        if after[key] - before.get(key, 0.0) >= q * total:
            return round(bound * 1000, 1)
    return None


def late_fraction(metrics: dict[str, float], before: dict[str, float] | None = None,
                  over_secs: float = 0.02) -> float:
    """Fraction of outbound frames produced more than ``over_secs`` late during the run (histogram buckets)."""
    before = before or {}
    key = f'voicegate_playout_late_seconds_bucket{{le="{over_secs}"}}'
    total = metrics.get("voicegate_playout_late_seconds_count", 0.0) - \
        before.get("voicegate_playout_late_seconds_count", 0.0)
    within = metrics.get(key, 0.0) - before.get(key, 0.0)
    return (total - within) / total if total > 0 else 0.0


def _ratio(after: dict[str, float], before: dict[str, float], num: str, den: str) -> float | None:
    """The run's increase of series ``num`` over that of ``den`` (None when ``den`` did not move)."""
    d = after.get(den, 0.0) - before.get(den, 0.0)
    return round((after.get(num, 0.0) - before.get(num, 0.0)) / d, 2) if d > 0 else None


async def _phrases() -> list[np.ndarray]:
    out = []
    for phrase in ("stop", "uh-huh", "wait a second", "okay"):
        speech = await EspeakTts(sample_rate=16_000).synthesize(phrase)
        out.append(resample(speech.pcm, 16_000, 48_000))
    return out


def _gap_secs(i: int) -> float:
    """The pause before a caller's ``i``-th phrase: 2.5–3.9 s, staggered over the callers."""
    return 2.5 + (i % 3) * 0.7


async def _talk(caller: Caller, phrases: list[np.ndarray], onsets_secs: list[float], secs: float, offset: int,
                onsets: list[float]) -> None:
    await caller.wait_event("bot.speaking", timeout=15)
    deadline = time.monotonic() + secs
    i = offset
    while time.monotonic() < deadline:
        await asyncio.sleep(_gap_secs(i))
        caller.mic.schedule(phrases[i % len(phrases)], 0.0)
        await caller.mic.clip_started.wait()
        assert caller.mic.clip_started_at is not None
        onsets.append(caller.mic.clip_started_at + onsets_secs[i % len(phrases)])
        i += 1


def webrtc_pauses_ms(caller: Caller, onsets: list[float]) -> list[float]:
    """Caller-side time to pause of an aiortc caller: speech onset in its microphone → the first of
    ``SILENT_RUN_FRAMES`` silent frames received, for phrases said while the bot was audible and that paused it."""
    from voicegate.load_socket import SocketCaller

    probe = SocketCaller("", "ws")
    probe.levels, probe.onsets = [(t, rms, 0.0) for t, rms in caller.bot_levels], onsets
    probe.events = [e for e in caller.events if "_received" in e]
    return probe.pauses_ms()


async def run_callers(url: str, calls: int, secs: float, offset: int, quiet: bool, transport: str = "webrtc") -> None:
    """A caller process: connect ``calls`` calls, say so on stdout, wait for ``go`` on stdin, talk (or stay
    quiet) for ``secs``, then print what the callers saw as one JSON line."""
    if transport != "webrtc":
        await run_socket_callers(url, calls, secs, offset, quiet, transport)
        return
    from voicegate.bench.scenario import onset_ms, speech_onset_ms

    loop = asyncio.get_running_loop()
    phrases = [] if quiet else await _phrases()
    onsets_secs = []
    for pcm in phrases:
        clean16 = resample(pcm, 48_000, 16_000)
        speech = speech_onset_ms(clean16)
        onsets_secs.append((speech if speech is not None else onset_ms(clean16)) / 1000)
    callers = [Caller(url, ClipTrack(), keep_frames=False) for _ in range(calls)]
    results = await asyncio.gather(*(c.connect() for c in callers), return_exceptions=True)
    failed = [str(r) for r in results if isinstance(r, BaseException)]
    live = [c for c, r in zip(callers, results, strict=True) if not isinstance(r, BaseException)]
    print(json.dumps({"connected": len(live), "failed": failed}), flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    cpu0 = time.process_time()
    onsets: list[list[float]] = [[] for _ in live]
    if quiet:
        await asyncio.sleep(secs)
    else:
        await asyncio.gather(*(_talk(c, phrases, onsets_secs, secs, offset + i, onsets[i])
                               for i, c in enumerate(live)))
    cpu = time.process_time() - cpu0
    pauses = [e["since_onset_ms"] for c in live for e in c.events
              if e["type"] == "bot.paused" and "since_onset_ms" in e]
    verdicts = [e["ms_since_onset"] for c in live for e in c.events if e["type"] == "gate.verdict"]
    heard = [p for c, o in zip(live, onsets, strict=True) for p in webrtc_pauses_ms(c, o)]
    print(json.dumps({"pauses": pauses, "caller_pauses": heard, "phrases": sum(map(len, onsets)),
                      "verdicts": verdicts, "cpu_secs": cpu}), flush=True)
    await asyncio.gather(*(c.close() for c in callers), return_exceptions=True)


async def run_socket_callers(url: str, calls: int, secs: float, offset: int, quiet: bool, transport: str) -> None:
    """:func:`run_callers` for ``/ws`` or ``/twilio`` callers (:mod:`voicegate.load_socket`)."""
    from voicegate.load_socket import SocketCaller, socket_phrases

    loop = asyncio.get_running_loop()
    phrases = [] if quiet else await socket_phrases(transport, await _phrases())
    callers = [SocketCaller(url, transport) for _ in range(calls)]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, connect=30)) as http:
        connected = [loop.create_future() for _ in callers]
        runs = [asyncio.ensure_future(c.run(http, f)) for c, f in zip(callers, connected, strict=True)]
        results = await asyncio.gather(*connected, return_exceptions=True)
        failed = [str(r) or type(r).__name__ for r in results if isinstance(r, BaseException)]
        live = [c for c, r in zip(callers, results, strict=True) if not isinstance(r, BaseException)]
        print(json.dumps({"connected": len(live), "failed": failed}), flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)
        cpu0 = time.process_time()

        async def talk(caller: SocketCaller, i: int) -> None:
            await asyncio.wait_for(caller.wait_speaking(), 15)
            deadline = time.monotonic() + secs
            while time.monotonic() < deadline:
                await asyncio.sleep(_gap_secs(i))
                caller.say(phrases[i % len(phrases)])
                i += 1

        if quiet:
            await asyncio.sleep(secs)
        else:
            await asyncio.gather(*(talk(c, offset + i) for i, c in enumerate(live)), return_exceptions=True)
        await asyncio.sleep(PAUSE_TAIL_SECS)  # the last phrase's pause and verdict
        cpu = time.process_time() - cpu0
        pauses = [e["since_onset_ms"] for c in live for e in c.events
                  if e["type"] == "bot.paused" and "since_onset_ms" in e]
        print(json.dumps({"pauses": pauses, "caller_pauses": [p for c in live for p in c.pauses_ms()],
                          "caller_voice_ends": [p for c in live for p in c.voice_end_ms()],
                          "caller_paused_events": [p for c in live for p in c.paused_event_ms()],
                          "phrases": sum(len(c.onsets) for c in live),
                          "verdicts": [v for c in live for v in c.verdict_ms()], "cpu_secs": cpu}), flush=True)
        for caller in callers:
            caller.hang_up()
        await asyncio.gather(*runs, return_exceptions=True)


PAUSE_TAIL_SECS = 1.5
"""Socket callers keep streaming this long after the talk time, so the last phrase's pause is heard."""


async def _spawn_callers(url: str, calls: int, secs: float, offset: int, quiet: bool,
                         transport: str = "webrtc") -> asyncio.subprocess.Process:
    args = [sys.executable, "-m", "voicegate.load", url, str(calls), str(secs), str(offset), "1" if quiet else "0",
            transport]
    return await asyncio.create_subprocess_exec(*args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                stderr=subprocess.DEVNULL)


async def _line(proc: asyncio.subprocess.Process, within_secs: float) -> dict[str, Any]:
    assert proc.stdout is not None
    raw = await asyncio.wait_for(proc.stdout.readline(), within_secs)
    if not raw:
        raise RuntimeError("a caller process exited early")
    return dict(json.loads(raw))


@dataclass
class _Running:
    """A server started elsewhere whose process id is known (its CPU is measured over its tree)."""

    pid: int
    url: str

    def cpu_secs(self) -> float:
        return tree_cpu_secs(self.pid)

    def rss_mb(self) -> float:
        return ServerProcess.rss_of(self.pid)

    async def stop(self) -> None:
        """Not ours to stop."""


async def run_load(calls: int, secs: float, url: str | None = None, quiet: bool = False,
                   workers: int | None = None, server_pid: int | None = None,
                   transport: str = "webrtc") -> dict[str, Any]:
    """Open ``calls`` concurrent calls over ``transport`` (webrtc, ws, twilio) for ``secs`` seconds; return the
    figures."""
    if transport not in TRANSPORTS:
        raise ValueError(f"transport {transport!r}: use one of {TRANSPORTS}")
    server: ServerProcess | _Running | None
    if url:
        server = _Running(server_pid, url) if server_pid else None
    else:
        server = await start_server(max(calls, 1), workers)
    base = url or (server.url if server else "")
    per_process = CALLS_PER_PROCESS if transport == "webrtc" else SOCKET_CALLS_PER_PROCESS
    groups = [min(per_process, calls - i) for i in range(0, calls, per_process)]
    procs = [await _spawn_callers(base, n, secs, i * per_process, quiet, transport) for i, n in enumerate(groups)]
    try:
        hello = [await _line(p, 90) for p in procs]
        await asyncio.sleep(1.0)  # let every call reach its steady state
        before = await scrape(base)
        cpu0, t0 = (server.cpu_secs() if server else 0.0), time.monotonic()
        root0 = own_cpu_secs(server.pid) if server else 0.0
        idle0 = machine_idle_secs()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(b"go\n")
            await p.stdin.drain()
        results = [await _line(p, secs + 60) for p in procs]
        elapsed = time.monotonic() - t0
        cpu = (server.cpu_secs() - cpu0) if server else float("nan")
        root = (own_cpu_secs(server.pid) - root0) if server else float("nan")
        supervised = server is not None and len(process_tree(server.pid)) > 1
        idle1 = machine_idle_secs()
        metrics = await scrape(base)
    finally:
        for p in procs:
            if p.stdin is not None and not p.stdin.is_closing():
                p.stdin.close()
        await asyncio.gather(*(asyncio.wait_for(p.wait(), 30) for p in procs), return_exceptions=True)
    pauses = [v for r in results for v in r["pauses"]]
    heard = [v for r in results for v in r["caller_pauses"]]
    verdicts = [v for r in results for v in r["verdicts"]]
    callers_cpu = sum(r["cpu_secs"] for r in results)
    result = {
        "calls": calls, "transport": transport, "mode": "quiet" if quiet else "barge-in", "secs": round(elapsed, 1),
        "workers": workers, "failed_calls": sum(len(h["failed"]) for h in hello),
        "server_cpu_percent_of_one_core": round(100 * cpu / elapsed, 1),
        "per_call_cpu_percent": round(100 * cpu / elapsed / max(calls, 1), 1),
        "supervisor_cpu_percent_of_one_core": round(100 * root / elapsed, 2) if supervised else None,
        "callers_cpu_percent_of_one_core": round(100 * callers_cpu / elapsed, 1),
        "caller_processes": len(procs),
        "machine_idle_percent": round(100 * (idle1 - idle0) / (elapsed * machine_cpus()), 1),
        "frames_late_over_20ms": round(late_fraction(metrics, before), 4),
        "time_to_pause_ms_p95": round(float(np.percentile(pauses, 95)), 1) if pauses else None,
        "server_commits": server_commits(metrics),
        "server_time_to_pause_ms_p95": histogram_quantile_ms(before, metrics, "voicegate_time_to_pause_seconds", 0.95),
        "server_detector_lag_ms_p50": histogram_quantile_ms(before, metrics, "voicegate_detector_lag_seconds", 0.5),
        "server_detector_lag_ms_p95": histogram_quantile_ms(before, metrics, "voicegate_detector_lag_seconds", 0.95),
        "caller_pause_ms_p50": round(float(np.percentile(heard, 50)), 1) if heard else None,
        "caller_pause_ms_p95": round(float(np.percentile(heard, 95)), 1) if heard else None,
        "caller_pauses": len(heard), "phrases": sum(r.get("phrases", 0) for r in results),
        **_percentiles("caller_voice_end_ms", [v for r in results for v in r.get("caller_voice_ends", [])]),
        **_percentiles("caller_paused_event_ms", [v for r in results for v in r.get("caller_paused_events", [])]),
        "verdict_ms_p50": round(float(np.percentile(verdicts, 50)), 1) if verdicts else None,
        "pauses": len(pauses),
        "server_rss_mb": round(server.rss_mb(), 1) if server else None,
        "stage_cpu_percent_of_one_core": stage_cpu(before, metrics, elapsed),
        "asr_queue_wait_ms_p95": histogram_quantile_ms(before, metrics, "voicegate_asr_queue_seconds", 0.95),
        "vad_windows_per_onnx_run": _ratio(metrics, before, "voicegate_vad_windows", "voicegate_vad_onnx_runs"),
    }
    if server:
        await server.stop()
    return result


def _percentiles(name: str, values: list[float]) -> dict[str, float | None]:
    """``{name}_p50`` and ``{name}_p95`` of ``values`` (None when there are none)."""
    return {f"{name}_p{q}": round(float(np.percentile(values, q)), 1) if values else None for q in (50, 95)}


ROUND_FIGURES = ("per_call_cpu_percent", "server_cpu_percent_of_one_core", "callers_cpu_percent_of_one_core",
                 "machine_idle_percent", "frames_late_over_20ms", "caller_pause_ms_p50", "caller_pause_ms_p95")
"""The figures :func:`summarize_rounds` gives as median, lowest and highest over the rounds."""


def summarize_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One line for several rounds of the same run (``voicegate load --rounds N``): each of ``ROUND_FIGURES`` as
    ``{"median", "min", "max"}`` over the rounds that measured it (``None`` when none did).

    A single run is not a figure: on these shared 2-core machines the same command on the same code read 4.6 to
    7.2 % per quiet call within one hour (README, "cost per call and capacity"); the spread says how far to trust
    the median, and two versions are compared by interleaving their rounds.
    """
    if not rounds:
        raise ValueError("no rounds to summarize")
    first = rounds[0]
    out: dict[str, Any] = {"summary": True, "rounds": len(rounds), "calls": first["calls"],
                           "transport": first["transport"], "mode": first["mode"], "workers": first.get("workers"),
                           "failed_calls": sum(r["failed_calls"] for r in rounds)}
    for name in ROUND_FIGURES:
        values = [float(r[name]) for r in rounds if r.get(name) is not None]
        out[name] = ({"median": round(float(np.median(values)), 4 if name.startswith("frames") else 1),
                      "min": min(values), "max": max(values)} if values else None)
    return out


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


if __name__ == "__main__":  # a caller process of run_load: URL CALLS SECS OFFSET QUIET TRANSPORT
    asyncio.run(run_callers(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1",
                            sys.argv[6] if len(sys.argv) > 6 else "webrtc"))
