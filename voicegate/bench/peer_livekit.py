"""LiveKit Agents' own barge-in code as a benchmark policy (``livekit-1.8``).

A real ``AgentSession`` from livekit-agents 1.8.9 runs each scenario: LiveKit's Silero plugin with its defaults is
the session's VAD, interruptions use the session's default ``InterruptionOptions`` (``min_duration=0.5``,
``min_words=0``, ``resume_false_interruption=True``, ``false_interruption_timeout=2.0``) in ``mode="vad"`` — the
``"adaptive"`` model runs only in LiveKit Cloud and is left out, not imitated. The bot's line is spoken with
``session.say(audio=...)``; the transcripts come from the same Whisper engine voicegate uses, plugged in as a
non-streaming LiveKit STT, which LiveKit wraps in its own ``StreamAdapter`` (one transcript per VAD segment) as it
does for every batch STT.

The session cannot run on a simulated clock (its timers and VAD run on the event loop and threads), so scenarios
play in real time: a media clock ticks every 20 ms, plays one frame of whatever LiveKit queued on the speaker
(:class:`SpeakerOutput`, which honours ``pause``/``resume``/``clear_buffer``), passes it through the scenario's echo
path into the microphone, and pushes the microphone frame into the session. Several scenarios run at once.

Two LiveKit defaults are set aside because they describe the start of a call, not the mid-call barge-in the bench
scores: ``aec_warmup_duration`` (3 s after the agent first speaks during which every interruption is ignored) and
preemptive generation (there is no LLM here). Both are said in the report.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import logging
import time
from collections import deque
from typing import Any

import numpy as np
from av import AudioFrame, AudioResampler

from voicegate.asr.base import Transcript, UtteranceAsr
from voicegate.asr.scheduler import AsrService
from voicegate.bench.echo_path import Echo
from voicegate.bench.scenario import MIC_FRAME, MicMix, Outcome
from voicegate.config import PIPELINE_SAMPLE_RATE, AsrOptions, GateOptions, PlayoutOptions
from voicegate.tts.base import Speech

LIVEKIT_VERSION = "1.8.9"
FRAME_S = 0.02
TAIL_S = 4.0
"""Longer than voicegate's 2.5 s: LiveKit resumes 2.0 s after the VAD's end of speech (≈ 0.55 s of silence)."""


def livekit_available() -> str | None:
    """None when LiveKit Agents and its Silero plugin can be imported; otherwise why not."""
    try:
        from livekit.agents import AgentSession  # noqa: F401
        from livekit.plugins import silero  # noqa: F401
    except Exception as exc:
        return f"livekit-agents is not importable ({exc}): pip install -e '.[peers]' (or make bench-peers)"
    return None


def _speaker_class() -> type:
    from livekit.agents.voice.io import AudioOutput, AudioOutputCapabilities

    class SpeakerOutput(AudioOutput):  # type: ignore[misc]
        """The far end's loudspeaker: plays 20 ms per media tick, honours pause / resume / clear."""

        def __init__(self, sample_rate: int) -> None:
            super().__init__(label="voicegate-bench", capabilities=AudioOutputCapabilities(pause=True),
                             sample_rate=sample_rate)
            self.rate = sample_rate
            self.frame_samples = sample_rate // 50
            self.queue: deque[np.ndarray] = deque()
            self.queued = 0
            self.paused = False
            self.segment_open = False
            self.flushed = False
            self.played_in_segment = 0
            self.log: list[tuple[float, str, float]] = []
            """(media ms, "pause" | "resume" | "clear", seconds still queued)."""
            self.now_ms = lambda: 0.0

        async def capture_frame(self, frame: Any) -> None:
            await super().capture_frame(frame)
            if not self.segment_open:
                self.segment_open, self.flushed, self.played_in_segment = True, False, 0
                self.on_playback_started(created_at=time.time())
            pcm = np.frombuffer(bytes(frame.data), dtype=np.int16)
            self.queue.append(pcm)
            self.queued += len(pcm)

        def flush(self) -> None:
            super().flush()
            self.flushed = True
            self._maybe_finished()

        def clear_buffer(self) -> None:
            self.log.append((self.now_ms(), "clear", self.queued / self.rate))
            self.queue.clear()
            self.queued = 0
            if self.segment_open:
                self.segment_open = False
                self.on_playback_finished(playback_position=self.played_in_segment / self.rate, interrupted=True)

        def pause(self) -> None:
            super().pause()
            self.log.append((self.now_ms(), "pause", self.queued / self.rate))
            self.paused = True

        def resume(self) -> None:
            super().resume()
            self.log.append((self.now_ms(), "resume", self.queued / self.rate))
            self.paused = False

        def next_frame(self) -> np.ndarray:
            out = np.zeros(self.frame_samples, dtype=np.int16)
            if self.paused:
                return out
            filled = 0
            while filled < self.frame_samples and self.queue:
                head = self.queue[0]
                take = min(len(head), self.frame_samples - filled)
                out[filled:filled + take] = head[:take]
                filled += take
                if take == len(head):
                    self.queue.popleft()
                else:
                    self.queue[0] = head[take:]
            self.queued -= filled
            self.played_in_segment += filled
            self._maybe_finished()
            return out

        def _maybe_finished(self) -> None:
            if self.segment_open and self.flushed and not self.queue:
                self.segment_open = False
                self.on_playback_finished(playback_position=self.played_in_segment / self.rate, interrupted=False)

    return SpeakerOutput


def _input_class() -> type:
    from livekit.agents import utils
    from livekit.agents.voice.io import AudioInput

    class MicInput(AudioInput):  # type: ignore[misc]
        """The caller's microphone: frames pushed by the media clock."""

        def __init__(self) -> None:
            super().__init__(label="voicegate-bench")
            self.chan = utils.aio.Chan()

        async def __anext__(self) -> Any:
            return await self.chan.__anext__()

    return MicInput


def _stt_class() -> type:
    from livekit.agents import stt
    from livekit.agents.types import NOT_GIVEN

    class BenchWhisperStt(stt.STT):  # type: ignore[misc]
        """voicegate's transcript engine as a batch LiveKit STT (LiveKit adds its VAD-driven StreamAdapter)."""

        def __init__(self, asr: UtteranceAsr, pool: concurrent.futures.Executor) -> None:
            super().__init__(capabilities=stt.STTCapabilities(streaming=False, interim_results=False))
            self.asr = asr
            self.pool = pool
            self.transcripts: list[tuple[float, str]] = []
            self.now_ms = lambda: 0.0

        async def _recognize_impl(self, buffer: Any, *, language: Any = NOT_GIVEN, conn_options: Any) -> Any:
            from livekit import rtc

            frame = rtc.combine_audio_frames(buffer)
            pcm = np.frombuffer(bytes(frame.data), dtype=np.int16)
            if frame.sample_rate != PIPELINE_SAMPLE_RATE:
                pcm = _resample(pcm, frame.sample_rate, PIPELINE_SAMPLE_RATE)
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(self.pool, self.asr.transcribe, pcm)
            text = result.spoken  # without "(coughing)"-style tags: a cough is no transcript at all
            self.transcripts.append((self.now_ms(), text))
            return stt.SpeechEvent(type=stt.SpeechEventType.FINAL_TRANSCRIPT,
                                   alternatives=[stt.SpeechData(language="en", text=text,
                                                                confidence=result.confidence)])

    return BenchWhisperStt


def _resample(pcm: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    resampler = AudioResampler(format="s16", layout="mono", rate=rate_out)
    frame = AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = rate_in
    parts = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    parts += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(parts).astype(np.int16) if parts else np.zeros(0, np.int16)


class ReplayingAsr:
    """The bench's shared transcripts for a real-time run: a transcript already made for the same audio is replayed
    after as long as its decode really took (the wait without the load), anything new is decoded."""

    def __init__(self, inner: UtteranceAsr) -> None:
        self.inner = inner
        self.name = getattr(inner, "name", "replaying")

    def transcribe(self, pcm: np.ndarray) -> Transcript:
        """Decode, or replay at the decode's own pace."""
        cache = getattr(self.inner, "cache", None)
        key = hashlib.blake2b(pcm.tobytes(), digest_size=16).digest()
        if cache is not None and key in cache:
            hit: Transcript = cache[key]
            time.sleep(hit.compute_ms / 1000)
            return hit
        return self.inner.transcribe(pcm)


class LiveKitRunner:
    """Runs scenarios through real LiveKit ``AgentSession`` objects, ``concurrency`` at a time, in real time.

    With ``voicegate``, each session has voicegate's integration in place (``livekit-1.8+voicegate``): no VAD and
    no STT of LiveKit's, manual turns, :class:`~voicegate.integrations.livekit.VoicegateSession` attached; the
    playout clock ticks with the scenario's media clock.
    """

    def __init__(self, asr: UtteranceAsr, concurrency: int = 6, voicegate: bool = False,
                 options: GateOptions | None = None, llm: Any = None, playout: PlayoutOptions | None = None) -> None:
        from livekit.plugins import silero

        for name in ("livekit", "livekit.agents", "livekit.plugins"):
            logging.getLogger(name).setLevel(logging.ERROR)
        self.asr = asr
        self.concurrency = concurrency
        self.voicegate = voicegate
        self.options = options or GateOptions()
        self.llm = llm
        """With voicegate: a LiveKit LLM that gets the caller's turns (``generate_reply``); None: turns are only
        recorded."""
        self.playout = playout
        self.vad = None if voicegate else silero.VAD.load()
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="bench-livekit-stt")
        asr_opts = AsrOptions()
        self.service = AsrService(ReplayingAsr(asr), asr_opts.workers, asr_opts.max_wait_ms) if voicegate else None
        self.cpu_s = 0.0
        self.audio_s = 0.0
        self.plumbing_cpu_s = 0.0

    def run_many(self, jobs: list[dict[str, Any]]) -> list[Outcome]:
        """Each job: ``run_scenario``-style keyword arguments (bot, clip, at_s, echo, noise)."""
        async def main() -> list[Outcome]:
            gate = asyncio.Semaphore(self.concurrency)

            async def one(job: dict[str, Any]) -> Outcome:
                async with gate:
                    return await self.run(**job)

            return list(await asyncio.gather(*(one(j) for j in jobs)))

        cpu0 = time.process_time()
        outcomes = asyncio.run(main())
        if self.service is not None:
            self.service.close()
            asr_opts = AsrOptions()
            self.service = AsrService(ReplayingAsr(self.asr), asr_opts.workers, asr_opts.max_wait_ms)
        self.cpu_s += time.process_time() - cpu0
        self.audio_s += sum(len(o.mic) / PIPELINE_SAMPLE_RATE for o in outcomes)
        return outcomes

    async def run(self, bot: Speech, clip: np.ndarray, at_s: float, echo: Echo | None = None,
                  noise: np.ndarray | None = None, gain_db: float = 0.0, tail_s: float = TAIL_S) -> Outcome:
        """One scenario, as :func:`voicegate.bench.scenario.run_scenario` builds it, through LiveKit."""
        from livekit import rtc
        from livekit.agents import Agent, AgentSession

        mix = MicMix(bot, clip, at_s, gain_db, echo, noise, tail_s)
        outcome = mix.outcome()

        speaker = _speaker_class()(bot.sample_rate)
        mic_in = _input_class()()
        stt_engine = _stt_class()(self.asr, self.pool)
        if self.voicegate:
            kwargs: dict[str, Any] = {"llm": self.llm} if self.llm is not None else {}
            session: Any = AgentSession(vad=None, aec_warmup_duration=None, **kwargs,
                                        turn_handling={"turn_detection": "manual",
                                                       "preemptive_generation": {"enabled": False}})
        else:
            session = AgentSession(vad=self.vad, stt=stt_engine, aec_warmup_duration=None,
                                   turn_handling={"interruption": {"mode": "vad"},
                                                  "preemptive_generation": {"enabled": False}})
        session.input.audio = mic_in
        session.output.audio = speaker
        await session.start(Agent(instructions="benchmark"))
        gate, stops = await self._attach(session, bot) if self.voicegate else (None, [])
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        if gate is not None:
            gate.reflex.clock.start_secs = t0  # the reflex's events on the scenario's clock (both monotonic)

        def now_ms() -> float:
            return (loop.time() - t0) * 1000

        speaker.now_ms = stt_engine.now_ms = now_ms
        frame_samples = bot.sample_rate // 50

        async def bot_audio() -> Any:
            for i in range(0, len(bot.pcm) - frame_samples + 1, frame_samples):
                yield rtc.AudioFrame(data=bot.pcm[i:i + frame_samples].tobytes(), sample_rate=bot.sample_rate,
                                     num_channels=1, samples_per_channel=frame_samples)

        handle = session.say("benchmark line", audio=bot_audio(), allow_interruptions=True, add_to_chat_ctx=False)
        out_frames: list[np.ndarray] = []
        for k in range(mix.frames):
            await asyncio.sleep(max(0.0, t0 + k * FRAME_S - loop.time()))
            if gate is not None and gate.output is not None:
                await gate.output.tick()
            frame = speaker.next_frame()
            out_frames.append(frame)
            pcm = mix.next(k, frame)
            await asyncio.sleep(max(0.0, t0 + (k + 1) * FRAME_S - loop.time()))
            mic_in.chan.send_nowait(rtc.AudioFrame(data=pcm.tobytes(), sample_rate=PIPELINE_SAMPLE_RATE,
                                                   num_channels=1, samples_per_channel=MIC_FRAME))
        await asyncio.sleep(0.2)  # the last frames' decisions land
        log = list(speaker.log)  # what happened during the scenario, not the teardown's clear
        with contextlib.suppress(Exception):
            handle.interrupt(force=True)
        if gate is not None:
            self.plumbing_cpu_s += gate.stats.plumbing_cpu_s
            await gate.aclose()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(session.aclose(), 5.0)
        if gate is not None:
            return _voicegate_outcome(outcome, gate, stops, bot, out_frames, mix.mic, mix.earliest_ms)
        return _outcome(outcome, log, stt_engine, out_frames, mix.mic, mix.earliest_ms)

    async def _attach(self, session: Any, bot: Speech) -> tuple[Any, list[int]]:
        from voicegate.integrations.livekit import VoicegateSession
        from voicegate.reflex import Reflex

        reflex = Reflex(self.options, bot_sample_rate=bot.sample_rate, call_id="bench-livekit", playout=self.playout)
        gate = await VoicegateSession.attach(session, reflex=reflex, asr=self.service, clock=False,
                                             deliver_turns=self.llm is not None)
        stops: list[int] = []
        on_stop = reflex.on_stop

        def stopped() -> None:
            stops.append(len(bot.pcm) - reflex.played_bot_samples)
            if on_stop is not None:
                on_stop()

        reflex.on_stop = stopped
        return gate, stops


def _voicegate_outcome(outcome: Outcome, gate: Any, stops: list[int], bot: Speech, out_frames: list[np.ndarray],
                       mic: np.ndarray, earliest: float) -> Outcome:
    """``livekit-1.8+voicegate``: decisions from the reflex's events (on the scenario's clock)."""
    def effective(t: float) -> float:
        return float(np.ceil(t / (FRAME_S * 1000)) * FRAME_S * 1000)

    events = gate.reflex.events.history
    for event in events:
        t = event["t_ms"]
        if t < earliest:
            continue
        kind = event["type"]
        if kind == "bot.paused" and outcome.pause_ms is None and outcome.stop_ms is None:
            outcome.pause_ms = effective(t)
        if kind == "bot.stopped" and outcome.stop_ms is None:
            outcome.stop_ms = t
            if stops:
                outcome.remaining_at_stop_s = stops[0] / bot.sample_rate
        if kind == "bot.resumed" and outcome.resume_ms is None and outcome.stop_ms is None:
            outcome.resume_ms = t
        if kind == "gate.verdict" and outcome.verdict_ms is None:
            outcome.verdict_ms = t
        if outcome.silence_ms is None and kind in ("bot.paused", "bot.stopped"):
            outcome.silence_ms = effective(t)
    outcome.verdicts = [v for v in (gate.reflex.gate.verdicts if gate.reflex.gate is not None else [])
                        if v["t_ms"] >= earliest] or list(gate.reflex.gate.verdicts or [])
    frames = np.stack(out_frames) if out_frames else np.zeros((0, 480), np.int16)
    first = int(np.ceil(outcome.onset_ms / (FRAME_S * 1000)))
    outcome.bot_after_onset_s = float(np.count_nonzero(frames[first:].any(axis=1)) * FRAME_S)
    outcome.bot_out = frames.reshape(-1)
    outcome.mic = mic.astype(np.int16)
    outcome.user_turns = list(gate.stats.turns)
    outcome.events = events
    outcome.cpu_ms = {**gate.reflex.cpu_ms, "plumbing": gate.stats.plumbing_cpu_s * 1000}
    outcome.extra = {"interruptions": gate.stats.interruptions, "input_dropped": gate.stats.input_dropped}
    return outcome


def _outcome(outcome: Outcome, log: list[tuple[float, str, float]], stt_engine: Any, out_frames: list[np.ndarray],
             mic: np.ndarray, earliest: float) -> Outcome:
    def effective(t: float) -> float:
        return float(np.ceil(t / (FRAME_S * 1000)) * FRAME_S * 1000)

    for t, kind, queued_s in log:
        if t < earliest:
            continue
        if kind == "pause" and outcome.pause_ms is None and outcome.stop_ms is None:
            outcome.pause_ms = effective(t)
        if kind == "clear" and outcome.stop_ms is None:
            outcome.stop_ms = t
            outcome.remaining_at_stop_s = queued_s
        if kind == "resume" and outcome.resume_ms is None and outcome.stop_ms is None:
            outcome.resume_ms = t
        if outcome.silence_ms is None and kind in ("pause", "clear"):
            outcome.silence_ms = effective(t)
    decided = [t for t in (outcome.stop_ms, outcome.resume_ms) if t is not None]
    if decided:
        outcome.verdict_ms = min(decided)
        label = "interrupt" if outcome.stop_ms is not None and outcome.stop_ms == outcome.verdict_ms else "resumed"
        outcome.verdicts = [{"t_ms": outcome.verdict_ms, "label": label,
                             "reasons": ["transcript" if label == "interrupt" else "false_interruption_timeout"]}]
    frames = np.stack(out_frames) if out_frames else np.zeros((0, 480), np.int16)
    first = int(np.ceil(outcome.onset_ms / (FRAME_S * 1000)))
    outcome.bot_after_onset_s = float(np.count_nonzero(frames[first:].any(axis=1)) * FRAME_S)
    outcome.bot_out = frames.reshape(-1)
    outcome.mic = mic.astype(np.int16)
    outcome.user_turns = [text for _, text in stt_engine.transcripts]
    return outcome
