"""``voicegate asr-bench --turns``: what the agent receives, offline and through live calls.

Offline, each turn engine transcribes every labelled order of ``../shared/data/speech/barista`` whole; the score is
the share of the slot values the user asked for that the transcript holds (:mod:`voicegate.bench.slots`), the
slot-word error rate, the decode time (p50 / p95) and the memory the model adds.

Live, the same clips are spoken into a real ``voicegate serve`` over ``GET /ws`` (16 kHz PCM16, real time, the bot
quiet after a one-word greeting) with ``OPENAI_BASE_URL`` pointing at :class:`ChatRecorder`, a local
OpenAI-compatible endpoint that records each chat request and answers with an empty reply. What the LLM received is
scored the same way; the time from the end of the user's speech (the clip's last voiced 32 ms window, by Silero, as
the gate sees it) to the request's arrival is the turn latency the agent feels.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web

from voicegate.asr.base import UtteranceAsr
from voicegate.asr.turns import speculate_windows
from voicegate.audio.pcm import load_audio
from voicegate.audio.vad import WINDOW_SAMPLES, SileroVad, VadDetector
from voicegate.bench.slots import SlotScore, SpokenRequest, load_barista
from voicegate.config import PIPELINE_SAMPLE_RATE, GateOptions, TurnOptions

BARISTA = Path("speech/barista")


def rss_mb() -> float:
    """This process's resident memory in MB."""
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50 and p95 (``None`` for no values)."""
    if not values:
        return {"p50": None, "p95": None}
    return {"p50": round(float(np.percentile(values, 50)), 1), "p95": round(float(np.percentile(values, 95)), 1)}


def turn_audio(pcm: np.ndarray, options: GateOptions | None = None, margin_windows: int | None = None) -> np.ndarray:
    """The audio a live call's turn transcriber gets for this clip: from 200 ms before the first speech onset the
    gate's VAD finds (after a second of silence, as in a call) to ``margin_windows`` after its last voiced window."""
    options = options or GateOptions()
    margin_windows = speculate_windows(TurnOptions()) if margin_windows is None else margin_windows
    vad = VadDetector(options)
    lead = PIPELINE_SAMPLE_RATE
    audio = np.concatenate([np.zeros(lead, np.int16), pcm, np.zeros(PIPELINE_SAMPLE_RATE, np.int16)])
    start, last = None, 0
    for window in vad.feed(audio):
        if window.event == "start" and start is None:
            start = max(0, window.segment_start_samples - 3200)
        if window.voiced:
            last = window.end_samples
    if start is None:
        return pcm
    return audio[start:last + margin_windows * WINDOW_SAMPLES]


def offline_engine(engine: UtteranceAsr, clips: list[SpokenRequest], rss_before_mb: float,
                   margin_windows: int | None = None) -> dict[str, Any]:
    """Every clip through ``engine``, cut as a live turn is (:func:`turn_audio`); the score, the decode times and
    the memory it added."""
    score, times, rows = SlotScore(), [], []
    for clip in clips:
        transcript = engine.transcribe(turn_audio(load_audio(clip.path, PIPELINE_SAMPLE_RATE),
                                                  margin_windows=margin_windows))
        times.append(transcript.compute_ms)
        missed = score.add(clip.slots, transcript.text)
        rows.append({"clip": clip.path.name, "text": transcript.text, "values": len(clip.slots), "missed": missed})
    return {"engine": engine.name, "clips": len(clips), "slots_heard": round(score.rate, 4),
            "heard": score.heard, "values": score.values, "slot_wer": round(score.word_error_rate, 4),
            "decode_ms": percentiles(times), "rss_added_mb": round(rss_mb() - rss_before_mb), "rows": rows}


def speech_end_secs(pcm: np.ndarray) -> float:
    """Where the clip's speech ends: the end of its last window that Silero calls speech (p ≥ 0.5)."""
    vad = SileroVad()
    last = 0
    for i in range(0, len(pcm) - WINDOW_SAMPLES + 1, WINDOW_SAMPLES):
        if vad(pcm[i:i + WINDOW_SAMPLES]) >= 0.5:
            last = i + WINDOW_SAMPLES
    return last / PIPELINE_SAMPLE_RATE


@dataclass
class ChatRecorder:
    """A local OpenAI-compatible chat endpoint: records (arrival time, last user message), answers nothing."""

    requests: list[tuple[float, str]] = field(default_factory=list)
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)
    runner: web.AppRunner | None = None
    port: int = 0

    @property
    def base_url(self) -> str:
        """What ``OPENAI_BASE_URL`` must say."""
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> None:
        """Listen on a free loopback port."""
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def close(self) -> None:
        """Stop listening."""
        if self.runner is not None:
            await self.runner.cleanup()

    async def wait_for(self, text: str, after: float, timeout_secs: float) -> float | None:
        """Arrival time of the first request after ``after`` whose user message is ``text``."""
        async def found() -> float | None:
            return next((t for t, said in self.requests if t >= after and said == text), None)

        deadline = time.monotonic() + timeout_secs
        async with self.arrived:
            while (t := await found()) is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                try:
                    await asyncio.wait_for(self.arrived.wait(), left)
                except TimeoutError:
                    return None
            return t

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        now = time.monotonic()
        body = await request.json()
        said = next((str(m["content"]) for m in reversed(body.get("messages", [])) if m.get("role") == "user"), "")
        async with self.arrived:
            self.requests.append((now, said))
            self.arrived.notify_all()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        chunk = {"id": "rec", "object": "chat.completion.chunk", "created": int(time.time()), "model": "recorder",
                 "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": "stop"}]}
        await response.write(f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode())
        return response


async def live_turn(url: str, clip: SpokenRequest, recorder: ChatRecorder) -> dict[str, Any]:
    """One clip as its own call over ``/ws``: what reached the LLM, and when."""
    loop = asyncio.get_running_loop()  # decoding and VAD off the loop: other calls stream in real time meanwhile
    pcm = await loop.run_in_executor(None, load_audio, clip.path, PIPELINE_SAMPLE_RATE)
    end_secs = await loop.run_in_executor(None, speech_end_secs, pcm)
    frame = PIPELINE_SAMPLE_RATE // 50
    events: list[dict[str, Any]] = []
    greeted = asyncio.Event()
    turned = asyncio.Event()
    ws_url = url.replace("http://", "ws://")
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{ws_url}/ws") as ws:
        await ws.send_str(json.dumps({"type": "start", "sample_rate": PIPELINE_SAMPLE_RATE, "encoding": "pcm16"}))

        async def read() -> None:
            async for message in ws:
                if message.type == aiohttp.WSMsgType.TEXT:
                    event = json.loads(message.data)
                    event["_received"] = time.monotonic()
                    events.append(event)
                    if event["type"] == "bot.done":
                        greeted.set()
                    if event["type"] == "user.turn":
                        turned.set()

        reader = asyncio.ensure_future(read())
        silence = np.zeros(frame, "<i2").tobytes()
        t_wait = time.monotonic()
        while not greeted.is_set() and time.monotonic() - t_wait < 10:  # the bot is quiet before the user speaks
            await ws.send_bytes(silence)
            await asyncio.sleep(0.02)
        t0 = time.monotonic()
        audio = np.concatenate([pcm, np.zeros(PIPELINE_SAMPLE_RATE // 2, np.int16)]).astype("<i2")
        for k in range(len(audio) // frame):
            await asyncio.sleep(max(0.0, t0 + (k + 1) / 50 - time.monotonic()))
            await ws.send_bytes(audio[k * frame:(k + 1) * frame].tobytes())
        t_sent = time.monotonic()
        while not turned.is_set() and time.monotonic() - t_sent < 8:
            await ws.send_bytes(silence)
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # a second turn (the user paused longer than end_of_turn_ms) would be here by now
        turns = [e for e in events if e["type"] == "user.turn"]
        turn = turns[0] if turns else None
        arrival = await recorder.wait_for(turn["text"], t0, 3.0) if turn is not None else None
        await ws.send_str(json.dumps({"type": "stop"}))
        await asyncio.wait_for(reader, 5)
    speech_end = t0 + end_secs
    finals = " ".join(e["text"] for e in events if e["type"] == "asr.final")
    return {"clip": clip.path.name, "text": " ".join(e["text"] for e in turns), "turns": len(turns),
            "engine": turn.get("engine") if turn is not None else None,
            "speculative": turn.get("speculative") if turn is not None else None,
            "waited_after_end_ms": turn.get("waited_after_end_ms") if turn is not None else None,
            "reflex_text": finals,
            "request_after_speech_ms": round((arrival - speech_end) * 1000, 1) if arrival is not None else None}


async def live_turns(url: str, clips: list[SpokenRequest], recorder: ChatRecorder, calls: int) -> dict[str, Any]:
    """Every clip as its own call, ``calls`` at a time; the score of what the LLM received."""
    slots = asyncio.Semaphore(calls)
    rows: list[dict[str, Any]] = [{} for _ in clips]

    async def one(i: int) -> None:
        async with slots:
            rows[i] = await live_turn(url, clips[i], recorder)

    await asyncio.gather(*(one(i) for i in range(len(clips))))
    score, reflex = SlotScore(), SlotScore()
    for clip, row in zip(clips, rows, strict=True):
        row["missed"] = score.add(clip.slots, row["text"])
        reflex.add(clip.slots, row["reflex_text"])
    latency = [r["request_after_speech_ms"] for r in rows if r["request_after_speech_ms"] is not None]
    return {"calls": calls, "clips": len(clips), "slots_heard": round(score.rate, 4),
            "slot_wer": round(score.word_error_rate, 4), "reflex_slots_heard": round(reflex.rate, 4),
            "requests": len(latency), "request_after_speech_ms": percentiles(latency),
            "ready_early": sum(r["waited_after_end_ms"] is not None and r["waited_after_end_ms"] < 1.0 for r in rows),
            "rows": rows}


async def run_live(clips: list[SpokenRequest], calls: list[int], engine: str) -> dict[str, Any]:
    """A ``voicegate serve`` (one worker) with the turn engine ``engine``, the recorder as its LLM."""
    from voicegate.load import start_server

    recorder = ChatRecorder()
    await recorder.start()
    env = {"OPENAI_BASE_URL": recorder.base_url, "OPENAI_API_KEY": "bench", "VOICEGATE_GREETING": "Hi.",
           "VOICEGATE_TURN_ENGINE": engine}
    server = await start_server(max(calls) + 1, workers=1, env=env)
    try:
        await live_turn(server.url, clips[0], recorder)  # loads the models
        out: dict[str, Any] = {"engine": engine, "runs": []}
        for n in calls:
            out["runs"].append(await live_turns(server.url, clips, recorder, n))
        out["server_rss_mb"] = round(server.rss_mb())
        return out
    finally:
        await server.stop()
        await recorder.close()


def barista_clips(shared: Path, limit: int | None = None) -> list[SpokenRequest]:
    """The labelled orders (every one, or the first ``limit`` in file-name order)."""
    clips = load_barista(shared / BARISTA)
    return clips[:limit] if limit else clips


def render(report: dict[str, Any]) -> str:
    """The report as Markdown."""
    lines = [f"# Turn transcripts: {report['clips']} spoken orders ({report['cpu']})", "",
             "| engine | where | slot values heard | slot-word error | decode / request after speech p50 / p95 "
             "(ms) | memory (MB) |", "|---|---|---|---|---|---|"]
    for e in report["offline"]:
        d = e["decode_ms"]
        lines.append(f"| {e['engine']} | offline | {e['slots_heard']:.1%} ({e['heard']}/{e['values']}) | "
                     f"{e['slot_wer']:.1%} | decode {d['p50']} / {d['p95']} | +{e['rss_added_mb']} |")
    live = report.get("live")
    if live:
        for e in report["offline"]:
            names = {row["clip"] for row in live["runs"][0]["rows"]} if live["runs"] else set()
            if len(names) < report["clips"]:
                rows = [row for row in e["rows"] if row["clip"] in names]
                values = sum(r["values"] for r in rows)
                rate = 1 - sum(len(r["missed"]) for r in rows) / max(1, values)
                lines.append(f"| {e['engine']} | offline, the {len(rows)} live clips | {rate:.1%} | | | |")
        for run in live["runs"]:
            r = run["request_after_speech_ms"]
            lines.append(f"| {live['engine']} | live, {run['calls']} call(s) at once ({run['clips']} clips) | "
                         f"{run['slots_heard']:.1%} | {run['slot_wer']:.1%} | request {r['p50']} / {r['p95']} "
                         f"({run['ready_early']} of {run['clips']} ready when the turn ended) | "
                         f"{live['server_rss_mb']} (server) |")
            lines.append(f"| reflex tiny.en (`asr.final`, same calls) | live, {run['calls']} call(s) | "
                         f"{run['reflex_slots_heard']:.1%} | | | |")
    lines += ["", f"Command: `{report['command']}`"]
    return "\n".join(lines) + "\n"


def write(report: dict[str, Any], out: Path) -> None:
    """``turns.json`` and ``turns.md`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "turns.json").write_text(json.dumps(report, indent=1))
    (out / "turns.md").write_text(render(report))


def environment_note() -> str:
    """Which numeric profile ran (figures differ between CPUs)."""
    keys = ("OPENBLAS_CORETYPE", "CT2_FORCE_CPU_ISA")
    return ", ".join(f"{k}={os.environ[k]}" for k in keys if k in os.environ) or "default CPU profile"
