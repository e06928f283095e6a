"""``voicegate bench --live``: the scenarios played through real WebRTC calls, measured from the caller's side.

Each scenario is one call to ``voicegate serve`` (started here in its own process unless ``--url`` is given). Once
the bot starts speaking, the caller's microphone plays the scenario in real time — the noise bed from the start,
the clip ``at_s`` seconds in, the bot's own received audio mixed back for echo scenarios — and the caller records
what comes back: the arrival time and level of every 20 ms frame of the bot's voice and every event on the data
channel. From those alone (a black box):

- ``time_to_pause_ms``: speech onset in the clip → the first inbound frame of a silent stretch (≥ 100 ms), for
  scenarios where the bot was audible just before the onset (an onset in a natural pause has no pause to see)
  and the server said it paused or stopped (so a gap between sentences is not taken for a pause);
- ``stop_ms``: the ``bot.stopped`` event's arrival; ``verdict_ms``: the first ``gate.verdict``'s arrival;
- ``resume_ms``: the bot audible again after that silence (non-interruptions) — later than the resume itself when
  the bot's speech resumes inside a pause between its own words, so ``bot.resumed``'s arrival is reported too.

Times are relative to the capture of the first sample of the scenario's microphone signal, on this machine's
monotonic clock; like a real microphone, the caller sends each 20 ms packet once its last sample is captured.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from voicegate.audio.pcm import gain, load_audio, resample
from voicegate.bench.corpus import Scenario
from voicegate.bench.scenario import onset_ms, speech_offset_ms, speech_onset_ms
from voicegate.client import Caller, ClipTrack
from voicegate.config import PIPELINE_SAMPLE_RATE

SILENT_RMS = 60.0
"""A received frame quieter than this (s16 RMS, ≈ −55 dBFS) is silence."""
SILENT_RUN_FRAMES = 5
"""A pause is a silent stretch of at least this many frames (100 ms): longer than the gaps between words."""
AUDIBLE_BEFORE_MS = 160.0
TAIL_SECS = 2.5
CLIP_SECS = 6.0


@dataclass
class LiveClip:
    """A scenario's microphone signal at 48 kHz, and where its sound starts and ends (ms from the start)."""

    mic48: np.ndarray
    onset_ms: float
    sound_end_ms: float
    total_secs: float


def prepare(sc: Scenario) -> LiveClip:
    """Mix the scenario's microphone signal (clip at ``at_s`` over the noise bed) as the offline runner does."""
    clip = load_audio(sc.audio, PIPELINE_SAMPLE_RATE)[: int(PIPELINE_SAMPLE_RATE * CLIP_SECS)] if sc.audio \
        else np.zeros(8000, np.int16)
    clip = gain(clip, sc.gain_db)
    start = int(sc.at_s * PIPELINE_SAMPLE_RATE)
    total = start + len(clip) + int(TAIL_SECS * PIPELINE_SAMPLE_RATE)
    mic = np.zeros(total, np.float32)
    mic[start:start + len(clip)] += clip
    if sc.noise is not None:
        bed = gain(load_audio(sc.noise, PIPELINE_SAMPLE_RATE), sc.noise_gain_db).astype(np.float32)
        mic += np.tile(bed, int(np.ceil(total / max(1, len(bed)))))[:total]
    speech_at = speech_onset_ms(clip) if clip.any() else None
    onset = sc.at_s * 1000 + (speech_at if speech_at is not None else onset_ms(clip))
    end = sc.at_s * 1000 + (speech_offset_ms(clip) if clip.any() else 0.0)
    pcm16 = np.clip(mic, -32768, 32767).astype(np.int16)
    return LiveClip(resample(pcm16, PIPELINE_SAMPLE_RATE, 48_000), onset, end, total / PIPELINE_SAMPLE_RATE)


async def run_live_scenario(base_url: str, sc: Scenario, clip: LiveClip, token: str | None = None) -> dict[str, Any]:
    """Place one call, play the scenario once the bot speaks, and measure what the caller hears."""
    caller = Caller(base_url, ClipTrack(), token=token, keep_frames=False)
    if sc.echo_delay_ms is not None:
        caller.loop_back(sc.echo_delay_ms, sc.echo_gain_db)
    await caller.connect()
    try:
        await caller.wait_event("bot.speaking", timeout=20)
        caller.mic.schedule(clip.mic48, 0.0)
        await asyncio.wait_for(caller.mic.clip_started.wait(), 5)
        t0 = caller.mic.clip_started_at
        assert t0 is not None
        await asyncio.sleep(max(0.0, t0 + clip.total_secs - time.monotonic()))
    finally:
        await caller.close()
    return measure(sc, clip, t0, caller.bot_levels, caller.events)


async def run_ws_scenario(base_url: str, sc: Scenario, clip: LiveClip, token: str | None = None) -> dict[str, Any]:
    """The same scenario over ``GET /ws`` (48 kHz PCM16 both ways, as the WebRTC caller's microphone)."""
    import json

    import aiohttp

    rate, frame = 48_000, 960
    levels: list[tuple[float, float]] = []
    heard: list[np.ndarray] = []
    events: list[dict[str, Any]] = []
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    speaking = asyncio.Event()
    url = base_url.replace("http://", "ws://").replace("https://", "wss://")
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{url}/ws", headers=headers) as ws:
        await ws.send_str(json.dumps({"type": "start", "sample_rate": rate, "encoding": "pcm16"}))

        async def read() -> None:
            async for message in ws:
                now = time.monotonic()
                if message.type == aiohttp.WSMsgType.BINARY:
                    pcm = np.frombuffer(message.data, "<i2")
                    heard.append(pcm)
                    levels.append((now, float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2)))))
                elif message.type == aiohttp.WSMsgType.TEXT:
                    event = json.loads(message.data)
                    event["_received"] = now
                    events.append(event)
                    if event["type"] == "bot.speaking":
                        speaking.set()

        reader = asyncio.ensure_future(read())
        silence = np.zeros(frame, np.int16).tobytes()
        while not speaking.is_set():  # a live microphone sends silence until the scenario starts
            await ws.send_bytes(silence)
            await asyncio.sleep(0.02)
        echo = sc.echo_delay_ms is not None
        delay = int((sc.echo_delay_ms or 0) * rate / 1000)
        echo_gain = 10 ** ((sc.echo_gain_db or 0.0) / 20)
        t0 = time.monotonic()  # the first sample's capture; chunk k leaves once its last sample is captured
        played = 0
        for k in range(len(clip.mic48) // frame):
            await asyncio.sleep(max(0.0, t0 + (k + 1) / 50 - time.monotonic()))
            chunk = clip.mic48[k * frame:(k + 1) * frame].astype(np.float32)
            if echo:
                back = np.concatenate(heard) if heard else np.zeros(0, np.int16)
                start = played - delay
                if start >= 0 and start + frame <= len(back):
                    chunk += echo_gain * back[start:start + frame]
            played += frame
            await ws.send_bytes(np.clip(chunk, -32768, 32767).astype("<i2").tobytes())
        await ws.send_str(json.dumps({"type": "stop"}))
        await asyncio.wait_for(reader, 5)
    return measure(sc, clip, t0, levels, events)


def measure(sc: Scenario, clip: LiveClip, t0: float, levels: list[tuple[float, float]],
            events: list[dict[str, Any]]) -> dict[str, Any]:
    """One row in the offline runner's format, from the caller's recordings (ms relative to ``t0``)."""
    times = np.array([(t - t0) * 1000 for t, _ in levels])
    silent = np.array([rms < SILENT_RMS for _, rms in levels])
    onset = clip.onset_ms
    after = [e for e in events if (e["_received"] - t0) * 1000 >= sc.at_s * 1000 - 40]

    def arrival(kind: str, **match: Any) -> float | None:
        for e in after:
            if e["type"] == kind and all(e.get(k) == v for k, v in match.items()):
                return round((e["_received"] - t0) * 1000, 1)
        return None

    before = (times >= onset - AUDIBLE_BEFORE_MS) & (times < onset)
    audible_at_onset = bool(before.any() and (~silent[before]).any())
    # Silence the server caused (it says so on the data channel), not a gap between the bot's sentences.
    paused = arrival("bot.paused") is not None or arrival("bot.stopped") is not None
    pause = _silent_run_start(times, silent, onset) if audible_at_onset and paused else None
    stop = arrival("bot.stopped")
    resume = None
    if pause is not None and stop is None:
        later = np.flatnonzero((times > pause) & ~silent)
        resume = round(float(times[later[0]]), 1) if later.size else None
    loud_after = int(np.count_nonzero((times >= onset) & ~silent))
    return {
        "id": sc.id, "label": sc.label, "group": sc.group, "onset_ms": round(onset, 1),
        "sound_end_ms": round(clip.sound_end_ms, 1), "pause_ms": pause, "silence_ms": pause, "stop_ms": stop,
        "resume_ms": resume, "verdict_ms": arrival("gate.verdict"),
        "verdict": next((e["label"] for e in after if e["type"] == "gate.verdict"), None),
        "reasons": next((e["reasons"] for e in after if e["type"] == "gate.verdict"), []),
        "server_pause_ms": next((e["since_onset_ms"] for e in after if e["type"] == "bot.paused"), None),
        "resume_event_ms": arrival("bot.resumed") if stop is None else None,
        "audible_at_onset": audible_at_onset, "remaining_at_stop_s": 0.0,
        "bot_after_onset_s": round(loud_after * 0.02, 3), "stop_phrase": False,
    }


def _silent_run_start(times: np.ndarray, silent: np.ndarray, from_ms: float) -> float | None:
    run = 0
    for i in np.flatnonzero(times >= from_ms):
        run = run + 1 if silent[i] else 0
        if run >= SILENT_RUN_FRAMES:
            return round(float(times[i - SILENT_RUN_FRAMES + 1]), 1)
    return None


async def run_live(base_url: str, scenarios: list[Scenario], calls: int = 1, token: str | None = None,
                   progress: Any = None, transport: str = "webrtc") -> list[dict[str, Any]]:
    """Every scenario as its own call, ``calls`` at a time; rows in manifest order."""
    clips = [prepare(sc) for sc in scenarios]
    rows: list[dict[str, Any] | None] = [None] * len(scenarios)
    slots = asyncio.Semaphore(max(1, calls))

    async def one(i: int) -> None:
        async with slots:
            try:
                run = run_ws_scenario if transport == "ws" else run_live_scenario
                rows[i] = await run(base_url, scenarios[i], clips[i], token)
            except Exception as exc:  # one failed call is reported, the run goes on
                rows[i] = {"id": scenarios[i].id, "label": scenarios[i].label, "error": f"{type(exc).__name__}: {exc}"}
            if progress is not None:
                progress.update(1)

    await asyncio.gather(*(one(i) for i in range(len(scenarios))))
    return [r for r in rows if r is not None]


LIVE_TARGETS = {"stop_phrase_verdict_after_end_ms.p95": 300.0, "resume_after_sound_end_ms.p50": 400.0,
                "resume_after_sound_end_ms.p95": 700.0}
"""The transcript stage's live targets. Time to pause has its target on the simulated pipeline (p95 ≤ 100 ms); the
caller-side figure adds the transport (packetisation and jitter buffers both ways) and is reported beside it."""


async def live_pass(scenarios: list[Scenario], url: str | None, calls: int, token: str | None,
                    stop_phrase_ids: set[str], transport: str = "webrtc") -> dict[str, Any]:
    """Run the live pass (starting ``voicegate serve`` unless ``url`` is given) and summarise it."""
    from tqdm import tqdm

    from voicegate.bench.metrics import by_group, by_label, percentiles, summarize
    from voicegate.load import start_server

    server = None if url else await start_server(calls + 1)
    base = url or (server.url if server else "")
    cpu0 = server.cpu_secs() if server else 0.0
    t_start = time.monotonic()
    progress = tqdm(total=len(scenarios), desc="bench --live", unit="call")
    try:
        rows = await run_live(base, scenarios, calls, token, progress, transport)
    finally:
        progress.close()
        if server is not None:
            cpu = server.cpu_secs() - cpu0
            await server.stop()
    ok = [r for r in rows if "error" not in r]
    for r in ok:
        r["stop_phrase"] = r["id"] in stop_phrase_ids
    metrics = {**summarize(ok), "per_label": by_label(ok), "per_group": by_group(ok)}
    metrics.pop("apt_s", None)  # the caller cannot see how much the bot still had to say
    server_pause = [r["server_pause_ms"] for r in ok if r["label"] == "interrupt" and r["server_pause_ms"] is not None]
    resumed = [r["resume_event_ms"] - r["sound_end_ms"] for r in ok
               if r["label"] != "interrupt" and r.get("resume_event_ms") is not None and r["sound_end_ms"] > 0]
    out: dict[str, Any] = {
        "server_pause": percentiles(server_pause),
        "resume_event_after_sound_end": percentiles(resumed),
        "url": url or "started here", "transport": transport, "calls_at_once": calls, "scenarios": rows,
        "metrics": metrics,
        "failed_calls": len(rows) - len(ok),
        "time_to_pause_excluded": sum(1 for r in ok if r["label"] == "interrupt" and not r["audible_at_onset"]),
        "wall_secs": round(time.monotonic() - t_start, 1),
    }
    if server is not None:
        out["server_cpu_percent_of_one_core"] = round(100 * cpu / max(1e-9, out["wall_secs"]), 1)
    out["targets"] = {}
    for key, limit in LIVE_TARGETS.items():
        value: Any = metrics
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        out["targets"][key] = {"value": value, "target": f"<= {limit}", "met": value is not None and value <= limit}
    return out


def render_live(report: dict[str, Any]) -> list[str]:
    """Simulated and live figures for the same scenarios, side by side."""
    live = report["live"]
    sim = report["policies"]["voicegate"]
    lm = live["metrics"]

    def pp(m: dict[str, Any], key: str) -> str:
        return f"{m[key]['p50']} / {m[key]['p95']}"

    rows = [("time to pause p50 / p95 ms (interrupts)", pp(sim, "time_to_pause_ms"), pp(lm, "time_to_pause_ms")),
            ("server-side onset → pause p50 / p95 ms (`bot.paused.since_onset_ms`)", "—", pp(live, "server_pause")),
            ("verdict latency p50 / p95 ms", pp(sim, "verdict_latency_ms"), pp(lm, "verdict_latency_ms")),
            ("stop phrases: stop after the phrase ends, p50 / p95 ms", pp(sim, "stop_phrase_verdict_after_end_ms"),
             pp(lm, "stop_phrase_verdict_after_end_ms")),
            ("bot speaking again after the sound ends, p50 / p95 ms", pp(sim, "resume_after_sound_end_ms"),
             pp(lm, "resume_after_sound_end_ms")),
            ("`bot.resumed` received after the sound ends, p50 / p95 ms", pp(sim, "resume_after_sound_end_ms"),
             pp(live, "resume_event_after_sound_end")),
            ("silence caused (pause → resume), p50 / p95 ms", pp(sim, "resume_gap_ms"), pp(lm, "resume_gap_ms")),
            ("false stops", str(sim["false_stop_rate"]), str(lm["false_stop_rate"])),
            ("missed stops", str(sim["missed_stop_rate"]), str(lm["missed_stop_rate"]))]
    for group, m in lm.get("per_group", {}).items():
        rows.append((f"{group}: false stops", str(sim.get("per_group", {}).get(group, {}).get("false_stop_rate")),
                     str(m["false_stop_rate"])))
    carrier = "a `GET /ws` call (48 kHz PCM16)" if live.get("transport") == "ws" else "a real WebRTC call"
    lines = ["", "## Simulated vs. live (same scenarios)", "",
             f"Live: every scenario is {carrier} to `voicegate serve` ({live['url']}, "
             f"{live['calls_at_once']} call(s) at a time), played in real time and measured from the caller's side "
             f"(frame arrival times and levels, data-channel events); {live['wall_secs']} s. "
             f"{live['time_to_pause_excluded']} interrupt(s) began while the bot was between words and have no pause "
             f"to measure; {live['failed_calls']} call(s) failed.", "",
             "| figure | simulated | live |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    if "server_cpu_percent_of_one_core" in live:
        lines.append(f"\nServer CPU during the live pass: {live['server_cpu_percent_of_one_core']} % of one core.")
    lines += ["", "Live targets:", ""]
    for key, t in live["targets"].items():
        lines.append(f"- {key}: {t['value']} (target {t['target']}) — {'met' if t['met'] else '**NOT MET**'}")
    return lines
