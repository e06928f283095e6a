"""voicegate in a Pipecat 1.14 pipeline: a processor pair around the agent.

    vg_in, vg_out = voicegate_processors()
    pipeline = Pipeline([transport.input(), vg_in, user_aggregator, llm, tts, vg_out, transport.output(),
                         assistant_aggregator])
    user_aggregator = LLMContextAggregatorPair(context, user_params=LLMUserAggregatorParams(
        user_turn_strategies=voicegate_turn_strategies())).user()

- :class:`VoicegateInput` (after ``transport.input()``) feeds the caller's audio to the reflex and passes it on.
  On a real interruption it broadcasts Pipecat's own ``InterruptionFrame`` (so the LLM, the TTS, the context and
  the output transport behave as Pipecat users expect); when the caller's turn ends it hands it to the user
  aggregator as ``ProposedUserStartedSpeakingFrame`` → ``TranscriptionFrame`` → ``ProposedUserStoppedSpeakingFrame``.
- :class:`VoicegateOutput` (before ``transport.output()``) is the bot's playout clock: Pipecat's TTS queues audio
  far ahead of real time, so holding it must happen here, at a real-time clock, and not at the output transport.
  It releases ``tick_ms`` of the bot's ``TTSAudioRawFrame`` audio per tick, silence while the reflex holds it
  (the bot is paused: the position is kept), from the same sample on a backchannel / noise / echo verdict, and
  drops it on a stop. Frames that follow the bot's audio downstream (``TTSTextFrame``, ``TTSStoppedFrame``,
  ``LLMFullResponseEndFrame``, …) are released with the audio they follow, so the assistant aggregator records
  what the caller really heard.
- Pipecat's own VAD-driven interruptions must be off while voicegate decides: give the user aggregator
  :func:`voicegate_turn_strategies` (``ExternalUserTurnStrategies(enable_interruptions=False)``) and no
  ``vad_analyzer``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    OutputAudioRawFrame,
    ProposedUserStartedSpeakingFrame,
    ProposedUserStoppedSpeakingFrame,
    StartFrame,
    SystemFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSTextFrame,
    UninterruptibleFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from voicegate.config import GateOptions, PlayoutOptions
from voicegate.reflex import Reflex

TESTED_WITH = "pipecat-ai==1.14.0"
END_DRAIN_SECS = 30.0
"""On ``EndFrame`` the bot's held audio may play out for at most this long before the frame goes on."""


def voicegate_turn_strategies() -> Any:
    """The user aggregator's turn strategies while voicegate decides: turns come from :class:`VoicegateInput`,
    and Pipecat raises no interruption of its own (``ExternalUserTurnStrategies(enable_interruptions=False)``)."""
    from pipecat.turns.user_turn_strategies import ExternalUserTurnStrategies

    return ExternalUserTurnStrategies(enable_interruptions=False)


@dataclass
class PipecatStats:
    """What the pair did (tests and the benchmark read it)."""

    interruptions: int = 0
    """``InterruptionFrame`` broadcasts raised by voicegate (one per stop)."""
    turns: list[str] = field(default_factory=list)
    """Turns handed to the user aggregator."""
    ticks: int = 0
    plumbing_cpu_s: float = 0.0
    """Thread CPU spent in the pair's own code (ticks, frame handling), the reflex's models excluded."""


class _Shared:
    """The reflex between the two processors, made at set-up with the pipeline's output rate."""

    def __init__(self, reflex: Reflex | None, options: GateOptions | None, playout: PlayoutOptions | None) -> None:
        self.reflex = reflex
        self.options = options
        self.playout = playout
        self.stats = PipecatStats()
        self.lock = asyncio.Lock()
        self.output: VoicegateOutput | None = None

    async def get(self, out_rate: int) -> Reflex:
        async with self.lock:
            if self.reflex is None:
                self.reflex = Reflex(self.options, bot_sample_rate=out_rate, playout=self.playout)
            await self.reflex.start()
            return self.reflex


class VoicegateInput(FrameProcessor):  # type: ignore[misc]
    """The caller's side of the pair: place it right after ``transport.input()``."""

    def __init__(self, shared: _Shared, *, deliver_turns: bool = True, user_id: str = "user",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._shared = shared
        self._deliver_turns = deliver_turns
        self._user_id = user_id
        self.reflex: Reflex | None = None

    async def setup(self, setup: Any) -> None:
        """Load the reflex's detectors (off the event loop) while Pipecat sets the pipeline up."""
        await super().setup(setup)
        self.reflex = await self._shared.get(setup.audio_out_sample_rate)
        self.reflex.on_stop = self._on_stop
        self.reflex.on_turn = self._on_turn

    @property
    def stats(self) -> PipecatStats:
        """Counters shared by the pair."""
        return self._shared.stats

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Pass every frame on; feed the caller's audio to the reflex."""
        await super().process_frame(frame, direction)
        t0 = time.thread_time()
        await self.push_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame) and direction == FrameDirection.DOWNSTREAM \
                and self.reflex is not None:
            pcm = np.frombuffer(frame.audio, dtype=np.int16)
            if frame.num_channels > 1:
                pcm = pcm.reshape(-1, frame.num_channels)[:, 0]
            self._shared.stats.plumbing_cpu_s += time.thread_time() - t0
            await self.reflex.feed_user(pcm, frame.sample_rate)
            return
        self._shared.stats.plumbing_cpu_s += time.thread_time() - t0
        if isinstance(frame, (EndFrame, CancelFrame)) and self.reflex is not None:
            self.reflex.close()

    def _on_stop(self) -> None:
        # Called from inside the reflex (the event loop): the interruption is raised from a task of its own.
        if self._shared.output is not None:
            self._shared.output.discard_until_interruption()
        self._shared.stats.interruptions += 1
        self.create_task(self.broadcast_interruption(), "voicegate-interruption")

    def _on_turn(self, text: str) -> None:
        self._shared.stats.turns.append(text)
        if self._deliver_turns and text.strip():
            self.create_task(self._push_turn(text), "voicegate-turn")

    async def _push_turn(self, text: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        await self.push_frame(ProposedUserStartedSpeakingFrame())
        await self.push_frame(TranscriptionFrame(text=text, user_id=self._user_id, timestamp=stamp, finalized=True))
        await self.push_frame(ProposedUserStoppedSpeakingFrame())


class VoicegateOutput(FrameProcessor):  # type: ignore[misc]
    """The bot's side of the pair: place it right before ``transport.output()``.

    Args:
        tick_ms: audio released per tick of the playout clock (a multiple of the reflex's 20 ms frame): 20 ms
            pauses soonest, 40 ms costs less CPU.
        clock: run the real-time clock (False: the owner calls :meth:`tick`, e.g. a simulated benchmark).
    """

    def __init__(self, shared: _Shared, *, tick_ms: int = 20, clock: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._shared = shared
        shared.output = self
        self.tick_ms = tick_ms
        self._clock_enabled = clock
        self._clock_task: asyncio.Task[None] | None = None
        self._held: deque[tuple[int, Frame]] = deque()
        """Frames that follow the bot's audio: (the reflex's ``bot_position`` when they came, frame)."""
        self._discarding = False
        self._idle = asyncio.Event()
        self.reflex: Reflex | None = None

    @property
    def stats(self) -> PipecatStats:
        """Counters shared by the pair."""
        return self._shared.stats

    def discard_until_interruption(self) -> None:
        """A stop: the bot's audio already on its way here belongs to the stopped reply."""
        self._discarding = True
        self._drop_held()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Hold the bot's audio (and what follows it) for the playout clock; pass everything else on."""
        await super().process_frame(frame, direction)
        t0 = time.thread_time()
        if isinstance(frame, StartFrame):
            self.reflex = await self._shared.get(self.processor_setup.audio_out_sample_rate)
            await self.push_frame(frame, direction)
            if self._clock_enabled and self._clock_task is None:
                self._clock_task = self.create_task(self._run_clock(), "voicegate-playout-clock")
        elif isinstance(frame, InterruptionFrame):
            self._discarding = False
            self._drop_held()
            if self.reflex is not None:
                self.reflex.clear_bot()
            await self.push_frame(frame, direction)
        elif isinstance(frame, EndFrame):
            await self._drain(END_DRAIN_SECS)
            await self._stop_clock()
            await self.push_frame(frame, direction)
        elif isinstance(frame, CancelFrame):
            await self._stop_clock()
            await self.push_frame(frame, direction)
        elif isinstance(frame, TTSAudioRawFrame) and direction == FrameDirection.DOWNSTREAM:
            self._take_audio(frame)
        elif direction == FrameDirection.UPSTREAM or isinstance(frame, SystemFrame):
            await self.push_frame(frame, direction)
        elif self._discarding and not isinstance(frame, UninterruptibleFrame):
            pass  # follows audio of the stopped reply
        elif not self._holding():
            await self._release(frame)
        else:
            assert self.reflex is not None
            self._held.append((self.reflex.bot_position, frame))
        self._shared.stats.plumbing_cpu_s += time.thread_time() - t0

    async def _release(self, frame: Frame) -> None:
        """Pass on a frame that follows the bot's audio, now that the audio before it has played."""
        if isinstance(frame, TTSTextFrame) and self.reflex is not None:
            self.reflex.bot_said(frame.text)
        await self.push_frame(frame)

    def _take_audio(self, frame: Any) -> None:
        if self._discarding or self.reflex is None:
            return
        pcm = np.frombuffer(frame.audio, dtype=np.int16)
        if frame.num_channels > 1:
            pcm = pcm.reshape(-1, frame.num_channels)[:, 0]
        self.reflex.feed_bot(pcm, frame.sample_rate)

    def _holding(self) -> bool:
        return bool(self._held) or (self.reflex is not None and self.reflex.queued_bot_samples > 0)

    def _drop_held(self) -> None:
        kept = deque((at, f) for at, f in self._held if isinstance(f, UninterruptibleFrame))
        self._held = kept

    async def tick(self) -> None:
        """One tick of the playout clock: release ``tick_ms`` of the bot's audio, or hold it."""
        reflex = self.reflex
        if reflex is None:
            return
        t0 = time.thread_time()
        self._shared.stats.ticks += 1
        frames = max(1, self.tick_ms // (1000 * reflex.frame_samples // reflex.bot_sample_rate))
        played_before = reflex.played_bot_samples
        paused = reflex.paused
        pcm = np.concatenate([reflex.next_bot_frame() for _ in range(frames)])
        played = reflex.played_bot_samples
        audio: Frame | None = None
        if played > played_before:
            audio = TTSAudioRawFrame(audio=pcm.tobytes(), sample_rate=reflex.bot_sample_rate, num_channels=1)
        elif paused or reflex.paused:
            audio = OutputAudioRawFrame(audio=pcm.tobytes(), sample_rate=reflex.bot_sample_rate, num_channels=1)
        if audio is not None:
            await self.push_frame(audio)
        while self._held and (self._held[0][0] <= played or reflex.queued_bot_samples == 0):
            await self._release(self._held.popleft()[1])
        if not self._holding():
            self._idle.set()
        self._shared.stats.plumbing_cpu_s += time.thread_time() - t0

    async def _run_clock(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        k = 0
        while True:
            k += 1
            await asyncio.sleep(max(0.0, start + k * self.tick_ms / 1000 - loop.time()))
            await self.tick()

    async def _drain(self, limit_secs: float) -> None:
        if self._clock_task is None or not self._holding():
            return
        self._idle.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), limit_secs)

    async def _stop_clock(self) -> None:
        task, self._clock_task = self._clock_task, None
        if task is not None:
            await self.cancel_task(task)

    async def cleanup(self) -> None:
        """Stop the playout clock."""
        await self._stop_clock()
        await super().cleanup()


def voicegate_processors(options: GateOptions | None = None, *, reflex: Reflex | None = None,
                         tick_ms: int = 20, playout: PlayoutOptions | None = None, deliver_turns: bool = True,
                         clock: bool = True, direct_mode: bool = False) -> tuple[VoicegateInput, VoicegateOutput]:
    """The pair for one call: ``VoicegateInput`` after ``transport.input()``, ``VoicegateOutput`` before
    ``transport.output()``.

    Args:
        options: the gate's thresholds (default :class:`~voicegate.config.GateOptions`).
        reflex: a reflex made by the caller (e.g. :meth:`Reflex.simulated` in a benchmark); by default one is
            made at set-up with the pipeline's output rate.
        tick_ms: audio released per tick of the playout clock.
        playout: fades and frame length of the bot's audio.
        deliver_turns: hand the caller's turns to the user aggregator (False: another STT does).
        clock: run the real-time playout clock (False: call ``VoicegateOutput.tick()`` yourself).
        direct_mode: Pipecat's direct mode (frames processed inline, no queues): a simulated benchmark.
    """
    shared = _Shared(reflex, options, playout)
    return (VoicegateInput(shared, deliver_turns=deliver_turns, enable_direct_mode=direct_mode),
            VoicegateOutput(shared, tick_ms=tick_ms, clock=clock, enable_direct_mode=direct_mode))


__all__ = ["TESTED_WITH", "PipecatStats", "VoicegateInput", "VoicegateOutput", "voicegate_processors",
           "voicegate_turn_strategies"]
