"""The peers' pipelines with voicegate's integration in place: ``pipecat-1.14+voicegate`` and
``livekit-1.8+voicegate`` (``pip install -e '.[peers]'``).

``pipecat-1.14+voicegate`` runs on the benchmark's simulated clock, as ``pipecat-1.14`` and ``voicegate`` do: the
integration's processor pair (:mod:`voicegate.integrations.pipecat`) with Pipecat's own ``LLMUserAggregator``
(``ExternalUserTurnStrategies(enable_interruptions=False)``) between them, linked as in a pipeline and driven in
Pipecat's direct mode. The bot's line goes in as the ``TTSAudioRawFrame``s a Pipecat TTS pushes (40 ms each, all
at once, far ahead of real time) after a ``TTSTextFrame``; each 20 ms the pair's playout clock ticks once and what
it pushed towards the output transport is what the caller hears (and what the echo path feeds back into the
microphone); the microphone goes in as ``InputAudioRawFrame``s. A stop is counted when the caller stops hearing
the bot; Pipecat's own ``InterruptionFrame`` (raised by the pair on a stop) and the ``LLMContextFrame`` the user
aggregator emits for the caller's turn are counted at the end of the chain.

``livekit-1.8+voicegate`` is a real ``AgentSession`` with the integration (:mod:`voicegate.integrations.livekit`),
in real time, through the same loudspeaker stand-in as ``livekit-1.8``
(:func:`voicegate.bench.peer_livekit.run_with_voicegate`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from voicegate.asr.base import UtteranceAsr
from voicegate.audio.pcm import resample
from voicegate.bench.echo_path import Echo
from voicegate.bench.scenario import FRAME_MS, MIC_FRAME, MicMix, Outcome
from voicegate.config import PIPELINE_SAMPLE_RATE, AsrOptions, GateOptions, PlayoutOptions
from voicegate.gate.relevance import RelevanceJudge
from voicegate.reflex import Reflex
from voicegate.tts.base import Speech

PIPECAT_VOICEGATE = "pipecat-1.14+voicegate"
LIVEKIT_VOICEGATE = "livekit-1.8+voicegate"
TTS_CHUNK_MS = 40
SETTLE_STEPS = 6
"""Loop turns after each step, so frames queued by the user aggregator (not in direct mode) move on."""


class _Timed:
    """Thread CPU spent inside the reflex's own calls made by the pair, so that its plumbing can be told apart."""

    def __init__(self, reflex: Reflex) -> None:
        self.inside_pair_s = 0.0
        feed_user, next_frame = reflex.feed_user, reflex.next_bot_frame

        async def timed_feed(pcm: np.ndarray, sample_rate: int, received_ms: float | None = None) -> None:
            t0 = time.thread_time()
            await feed_user(pcm, sample_rate, received_ms)
            self.inside_pair_s += time.thread_time() - t0

        def timed_frame() -> np.ndarray:
            t0 = time.thread_time()
            out = next_frame()
            self.inside_pair_s += time.thread_time() - t0
            return out

        reflex.feed_user = timed_feed  # type: ignore[method-assign]
        reflex.next_bot_frame = timed_frame  # type: ignore[method-assign]


def run_pipecat_voicegate(bot: Speech, clip: np.ndarray, at_s: float, judge: RelevanceJudge, asr: UtteranceAsr,
                          options: GateOptions | None = None, gain_db: float = 0.0, echo: Echo | None = None,
                          noise: np.ndarray | None = None, tail_s: float = 2.5, asr_options: AsrOptions | None = None,
                          tick_ms: int = FRAME_MS) -> Outcome:
    """One scenario through the Pipecat processor pair on the simulated clock (see the module's docstring)."""
    return asyncio.run(_pipecat(bot, clip, at_s, judge, asr, options or GateOptions(), gain_db, echo, noise, tail_s,
                                asr_options, tick_ms))


async def _pipecat(bot: Speech, clip: np.ndarray, at_s: float, judge: RelevanceJudge, asr: UtteranceAsr,
                   options: GateOptions, gain_db: float, echo: Echo | None, noise: np.ndarray | None, tail_s: float,
                   asr_options: AsrOptions | None, tick_ms: int) -> Outcome:
    from pipecat.clocks.system_clock import SystemClock
    from pipecat.frames.frames import (
        EndFrame,
        InputAudioRawFrame,
        InterruptionFrame,
        LLMContextFrame,
        OutputAudioRawFrame,
        StartFrame,
        TTSAudioRawFrame,
        TTSStartedFrame,
        TTSStoppedFrame,
        TTSTextFrame,
    )
    from pipecat.processors.aggregators.llm_context import LLMContext
    from pipecat.processors.aggregators.llm_response_universal import (
        LLMContextAggregatorPair,
        LLMUserAggregatorParams,
    )
    from pipecat.processors.frame_processor import FrameProcessor, FrameProcessorSetup
    from pipecat.utils.asyncio.task_manager import TaskManager

    from voicegate.bench.peer_pipecat import _quiet_loguru
    from voicegate.integrations.pipecat import voicegate_processors, voicegate_turn_strategies

    _quiet_loguru()
    playout = PlayoutOptions()
    rate = playout.sample_rate
    reflex = Reflex.simulated(asr, options, asr_options=asr_options, judge=judge, call_id="bench", playout=playout)
    timed = _Timed(reflex)
    vg_in, vg_out = voicegate_processors(reflex=reflex, clock=False, direct_mode=True, tick_ms=tick_ms)
    user = LLMContextAggregatorPair(LLMContext(), user_params=LLMUserAggregatorParams(
        user_turn_strategies=voicegate_turn_strategies())).user()
    heard: list[Any] = []
    counts = {"interruptions": 0, "llm_turns": 0}
    events_at: dict[str, float] = {}

    class Speaker(FrameProcessor):  # type: ignore[misc]
        """The output transport's place: what reaches it is played."""

        async def process_frame(self, frame: Any, direction: Any) -> None:
            await super().process_frame(frame, direction)
            if isinstance(frame, OutputAudioRawFrame):
                heard.append(frame)
            elif isinstance(frame, InterruptionFrame):
                counts["interruptions"] += 1
                events_at.setdefault("interruption", reflex.clock.now_ms())
            elif isinstance(frame, LLMContextFrame):
                counts["llm_turns"] += 1

    speaker = Speaker(enable_direct_mode=True)
    vg_in.link(user)
    user.link(vg_out)
    vg_out.link(speaker)
    loop = asyncio.get_running_loop()
    setup = FrameProcessorSetup(clock=SystemClock(), task_manager=TaskManager(loop=loop), pipeline_worker=None,
                                audio_out_sample_rate=rate, audio_in_sample_rate=PIPELINE_SAMPLE_RATE)
    for processor in (vg_in, user, vg_out, speaker):
        await processor.setup(setup)

    async def settle() -> None:
        for _ in range(SETTLE_STEPS):
            await asyncio.sleep(0)

    pair_s = 0.0
    """Thread CPU in the pair's calls (the reflex's own work is subtracted below)."""
    await vg_in.queue_frame(StartFrame(audio_out_sample_rate=rate))
    pcm = resample(bot.pcm, bot.sample_rate, rate)
    step = rate * TTS_CHUNK_MS // 1000
    t_pair = time.thread_time()
    await vg_in.queue_frame(TTSStartedFrame())
    await vg_in.queue_frame(TTSTextFrame(text=bot.text, text_type="sentence"))
    for i in range(0, len(pcm), step):
        await vg_in.queue_frame(TTSAudioRawFrame(audio=pcm[i:i + step].tobytes(), sample_rate=rate, num_channels=1))
    await vg_in.queue_frame(TTSStoppedFrame())
    await settle()
    pair_s += time.thread_time() - t_pair

    mix = MicMix(bot, clip, at_s, gain_db, echo, noise, tail_s)
    outcome = mix.outcome()
    playout_track = reflex.playout
    frame_samples = reflex.frame_samples
    ticks_per_frame = max(1, tick_ms // FRAME_MS)
    out_frames: list[np.ndarray] = []
    driver_now = lambda: reflex.clock.now_ms()  # noqa: E731
    pending: list[np.ndarray] = []
    for k in range(mix.frames):
        reflex.advance(k * FRAME_MS)
        await settle()
        was_paused = playout_track.paused
        if k % ticks_per_frame == 0:
            heard.clear()
            t_pair = time.thread_time()
            await vg_out.tick()
            pair_s += time.thread_time() - t_pair
            pending = [np.frombuffer(f.audio, np.int16) for f in heard]
            data = np.concatenate(pending) if pending else np.zeros(0, np.int16)
            pending = [data[j:j + frame_samples] for j in range(0, len(data), frame_samples)]
        frame = pending.pop(0) if pending else np.zeros(frame_samples, np.int16)
        frame = np.pad(frame, (0, frame_samples - len(frame)))
        out_frames.append(frame)
        mic = mix.next(k, frame)
        queued, generation = playout_track.queued_samples, playout_track.generation
        t_pair = time.thread_time()
        await vg_in.queue_frame(InputAudioRawFrame(audio=mic.tobytes(), sample_rate=PIPELINE_SAMPLE_RATE,
                                                   num_channels=1))
        pair_s += time.thread_time() - t_pair
        await settle()
        now = driver_now()
        effective = float(np.ceil(now / FRAME_MS) * FRAME_MS)
        if playout_track.paused and not was_paused and outcome.pause_ms is None and now >= mix.earliest_ms:
            outcome.pause_ms = effective
        if playout_track.generation != generation and now >= mix.earliest_ms and outcome.stop_ms is None:
            outcome.stop_ms = now
            outcome.remaining_at_stop_s = queued / rate
        if outcome.silence_ms is None and now >= mix.earliest_ms and (
                (playout_track.paused and not was_paused) or playout_track.generation != generation):
            outcome.silence_ms = effective
    reflex.advance(float("inf"))
    cpu_ms = reflex.cpu_ms
    await settle()
    await vg_in.queue_frame(EndFrame())
    await settle()
    for processor in (vg_in, user, vg_out, speaker):
        await processor.cleanup()
    for event in reflex.events.history:
        if event["t_ms"] < mix.earliest_ms:
            continue
        if event["type"] == "bot.resumed" and outcome.resume_ms is None:
            outcome.resume_ms = event["t_ms"]
        if event["type"] == "gate.verdict" and outcome.verdict_ms is None:
            outcome.verdict_ms = event["t_ms"]
    frames = np.stack(out_frames)
    first = int(np.ceil(outcome.onset_ms / FRAME_MS))
    outcome.bot_after_onset_s = float(np.count_nonzero(frames[first:].any(axis=1)) * FRAME_MS / 1000)
    outcome.verdicts = reflex.gate.verdicts if reflex.gate is not None else []
    outcome.events = reflex.events.history
    outcome.bot_out = frames.reshape(-1)
    outcome.mic = mix.mic.astype(np.int16)
    outcome.cpu_ms = {**cpu_ms, "plumbing": max(0.0, pair_s - timed.inside_pair_s) * 1000}
    outcome.user_turns = list(vg_in.stats.turns)
    outcome.extra = {"interruptions": counts["interruptions"], "llm_turns": counts["llm_turns"],
                     "interruption_ms": events_at.get("interruption")}
    return outcome


__all__ = ["LIVEKIT_VOICEGATE", "MIC_FRAME", "PIPECAT_VOICEGATE", "run_pipecat_voicegate"]
