"""Pipecat's own barge-in code as a benchmark policy (``pipecat-1.14``, ``pipecat-1.14-minwords2``).

Nothing here re-implements Pipecat: the microphone goes into Pipecat's ``VADController`` around its
``SileroVADAnalyzer`` with the default ``VADParams`` (the Silero model shipped in its wheel), the VAD's speech
events become ``VADUserStartedSpeakingFrame`` / ``VADUserStoppedSpeakingFrame`` exactly as Pipecat's
``VADProcessor`` broadcasts them, and they go with the transcripts into Pipecat's ``UserTurnController`` with its
user-turn strategies. A user turn that starts with ``enable_interruptions`` is an interruption: Pipecat broadcasts
an ``InterruptionFrame`` and its output transport drops the bot's audio — a hard stop (Pipecat has no pause and no
resume).

What this module supplies is only the plumbing a Pipecat pipeline would: a private event loop, a task manager,
``BotStartedSpeakingFrame`` when the bot talks, and transcripts. Transcripts are the same ones voicegate gets on
the same audio (Whisper through the benchmark's shared ASR queue, ``InterimTranscriptionFrame`` every 250 ms from
400 ms into the VAD's speech, ``TranscriptionFrame`` when the VAD reports the end), as a streaming STT service would
deliver them, without Whisper's annotations of non-speech sound (a cough is no transcript at all, not "(coughing)").

End of turn (Smart Turn v3) decides when the LLM answers, not whether the bot is interrupted; the bench does not
score it, so the controller runs with the default *start* strategies and a stop strategy that never fires.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from voicegate.asr.base import Transcript
from voicegate.asr.kws import KeywordHit
from voicegate.audio.vad import VadWindow
from voicegate.gate.reflex import GateSink, TranscriptRequest

PIPECAT_VERSION = "1.14.0"
PARTIAL_FROM_MS = 400.0
PARTIAL_EVERY_MS = 250.0
PRE_ROLL_SAMPLES = 3200
"""Audio kept before the VAD's start, as Pipecat's STT services keep it (200 ms)."""


def pipecat_available() -> str | None:
    """None when Pipecat can be imported; otherwise why not (with the command that installs it)."""
    try:
        import pipecat  # noqa: F401
        from pipecat.audio.vad.silero import SileroVADAnalyzer  # noqa: F401
    except Exception as exc:
        return f"pipecat-ai is not importable ({exc}): pip install -e '.[peers]' (or make bench-peers)"
    return None


def _quiet_loguru() -> None:
    """Pipecat logs every frame decision at DEBUG through loguru; the bench keeps its warnings only."""
    import sys

    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")


class PipecatGate:
    """Pipecat 1.14's VAD + user-turn start strategies, driven by the benchmark's audio and transcripts."""

    hangover_ms = 320.0
    wants_audio = True

    def __init__(self, sink: GateSink, min_words: int | None = None) -> None:
        _quiet_loguru()
        from pipecat.audio.vad.silero import SileroVADAnalyzer
        from pipecat.audio.vad.vad_controller import VADController
        from pipecat.clocks.system_clock import SystemClock
        from pipecat.processors.frame_processor import FrameProcessorSetup
        from pipecat.turns.user_start import (
            MinWordsUserTurnStartStrategy,
            TranscriptionUserTurnStartStrategy,
            VADUserTurnStartStrategy,
        )
        from pipecat.turns.user_stop import ExternalUserTurnStopStrategy
        from pipecat.turns.user_turn_controller import UserTurnController
        from pipecat.turns.user_turn_strategies import UserTurnStrategies
        from pipecat.utils.asyncio.task_manager import TaskManager

        self.sink = sink
        self.request_transcript: TranscriptRequest = lambda *args: None
        self.verdicts: list[dict[str, Any]] = []
        self.input_lag_ms = 0.0
        self.echo_settling = False
        self.compute_ms = 0.0
        self._loop = asyncio.new_event_loop()
        self._position = 0
        self._segment = 0
        self._speech_start: int | None = None
        self._speaking_since_ms: float | None = None
        self._last_partial_ms = 0.0
        self._bot_announced = False
        self._start_ms = 0.0
        self._pending: list[tuple[str, str]] = []
        start: list[Any] = ([MinWordsUserTurnStartStrategy(min_words=min_words)] if min_words
                            else [VADUserTurnStartStrategy(), TranscriptionUserTurnStartStrategy()])
        self._turns = UserTurnController(
            user_turn_strategies=UserTurnStrategies(start=start, stop=[ExternalUserTurnStopStrategy()]))
        self._vad = VADController(SileroVADAnalyzer(), audio_idle_timeout=0)
        self._frames: list[Any] = []
        self._vad_events: list[Any] = []
        task_manager = TaskManager(loop=self._loop)
        setup = FrameProcessorSetup(clock=SystemClock(), task_manager=task_manager, pipeline_worker=None,
                                    audio_in_sample_rate=16_000)

        async def started(_controller: Any) -> None:
            from pipecat.frames.frames import VADUserStartedSpeakingFrame
            self._frames.append(VADUserStartedSpeakingFrame(start_secs=self._vad._vad_analyzer.params.start_secs))

        async def stopped(_controller: Any) -> None:
            from pipecat.frames.frames import VADUserStoppedSpeakingFrame
            self._frames.append(VADUserStoppedSpeakingFrame(stop_secs=self._vad._vad_analyzer.params.stop_secs))

        async def turn_started(_controller: Any, strategy: Any, params: Any) -> None:
            if params.enable_interruptions:
                self._pending.append(("interrupt", type(strategy).__name__))

        async def nothing(*_args: Any, **_kwargs: Any) -> None:
            return None

        self._vad.add_event_handler("on_speech_started", started)
        self._vad.add_event_handler("on_speech_stopped", stopped)
        for event in ("on_push_frame", "on_broadcast_frame"):
            self._vad.add_event_handler(event, nothing)
            self._turns.add_event_handler(event, nothing)
        self._turns.add_event_handler("on_user_turn_started", turn_started)
        self._turns.add_event_handler("on_reset_aggregation", nothing)
        self._loop.run_until_complete(self._setup(setup))

    async def _setup(self, setup: Any) -> None:
        await self._vad.setup(setup)
        await self._turns.setup(setup)

    # -- the driver's interface --------------------------------------------------------------------------------

    def on_audio(self, pcm: np.ndarray, t_ms: float) -> float:
        """Run one inbound chunk through Pipecat's VAD and turn controller; returns the compute time in ms."""
        from pipecat.frames.frames import BotStartedSpeakingFrame, InputAudioRawFrame

        t0 = time.perf_counter()
        self._position += len(pcm)
        frames: list[Any] = []
        if self.sink.bot_active and not self._bot_announced:
            self._bot_announced = True
            frames.append(BotStartedSpeakingFrame())
        frames.append(InputAudioRawFrame(audio=pcm.astype(np.int16).tobytes(), sample_rate=16_000, num_channels=1))
        self._loop.run_until_complete(self._process(frames))
        return (time.perf_counter() - t0) * 1000

    async def _process(self, frames: list[Any]) -> None:
        from pipecat.frames.frames import InputAudioRawFrame

        for frame in frames:
            if isinstance(frame, InputAudioRawFrame):
                await self._vad.process_frame(frame)
            await self._turns.process_frame(frame)
            while self._frames:
                vad_frame = self._frames.pop(0)
                self._vad_events.append(vad_frame)
                await self._turns.process_frame(vad_frame)

    def apply(self, t_ms: float) -> None:
        """Act on what Pipecat decided in the last chunk, at ``t_ms`` (chunk end + compute)."""
        from pipecat.frames.frames import VADUserStartedSpeakingFrame, VADUserStoppedSpeakingFrame

        for frame in self._vad_events:
            if isinstance(frame, VADUserStartedSpeakingFrame):
                self._segment += 1
                start_samples = self._position - int(frame.start_secs * 16_000)
                self._speech_start = max(0, start_samples - PRE_ROLL_SAMPLES)
                self._speaking_since_ms = t_ms
                self._start_ms = frame.start_secs * 1000
                self._last_partial_ms = t_ms
            elif isinstance(frame, VADUserStoppedSpeakingFrame) and self._speech_start is not None:
                self.request_transcript(self._segment, self._speech_start, self._position, True)
                self._speech_start = None
        self._vad_events.clear()
        if (self._speech_start is not None and self._speaking_since_ms is not None
                and t_ms - self._speaking_since_ms >= PARTIAL_FROM_MS - self._start_ms
                and t_ms - self._last_partial_ms >= PARTIAL_EVERY_MS):
            self._last_partial_ms = t_ms
            self.request_transcript(self._segment, self._speech_start, self._position, False)
        self._decide(t_ms)

    def _decide(self, t_ms: float) -> None:
        for label, strategy in self._pending:
            if self.sink.bot_active and not self.verdicts:
                self.verdicts.append({"t_ms": t_ms, "label": label, "reasons": [strategy]})
                self.sink.on_verdict(label, [strategy])
        self._pending.clear()

    def on_transcript(self, segment_id: int, transcript: Transcript, t_ms: float, end_samples: int = -1) -> None:
        """A transcript arrives as Pipecat's STT frames would: interim, or final at the VAD's end."""
        from pipecat.frames.frames import InterimTranscriptionFrame, TranscriptionFrame

        text = transcript.spoken  # without "(coughing)"-style tags, as a streaming STT service would send
        if not text:
            return
        stamp = str(t_ms)
        frame = (TranscriptionFrame(text=text, user_id="user", timestamp=stamp, finalized=True) if transcript.final
                 else InterimTranscriptionFrame(text=text, user_id="user", timestamp=stamp))
        self._loop.run_until_complete(self._process([frame]))
        self._decide(t_ms)

    def on_transcript_failed(self, segment_id: int, end_samples: int, cause: str, t_ms: float) -> None:
        """A lost transcript changes nothing: Pipecat waits for the next one."""

    def on_window(self, w: VadWindow, t_ms: float) -> None:
        """voicegate's VAD windows are not used: Pipecat runs its own VAD on the audio."""

    def on_keyword(self, hit: KeywordHit, t_ms: float) -> None:
        """Pipecat has no stop-phrase spotter."""

    def close(self) -> None:
        """Release Pipecat's executor threads and the private loop."""
        async def cleanup() -> None:
            await self._vad.cleanup()
            await self._turns.cleanup()

        self._loop.run_until_complete(cleanup())
        self._loop.close()
