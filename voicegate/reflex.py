"""The reflex as a library: voicegate's barge-in decisions without its server.

Feed it the caller's audio and the bot's outgoing audio (any sample rate; both are converted inside) and pull the
bot's audio back out at the playout clock, one frame at a time: while the caller makes a sound the frames are
silence (the bot is *paused*, its position kept); a backchannel, a noise or the bot's own echo *resumes* it from the
exact sample; a real interruption *stops* it (everything queued is dropped) and, once the caller has finished, hands
over the caller's turn as text. It emits the server's events (``bot.paused``, ``gate.verdict``, ``bot.resumed``,
``bot.stopped``, ``asr.final``, …) with the same fields.

    reflex = Reflex(bot_sample_rate=24_000)
    await reflex.start()                                # loads VAD, keyword spotter, echo guard (off the loop)
    reflex.on_turn = lambda text: print("user:", text)  # the caller's turn, once per turn
    reflex.on_stop = cancel_my_llm_and_tts              # a real interruption: drop the reply
    reflex.add_listener(print)                          # every event as a dict
    ...
    await reflex.feed_user(mic_pcm, 48_000)             # caller audio as it arrives (s16 mono)
    reflex.feed_bot(tts_pcm, 22_050)                    # the bot's audio, as fast as the TTS makes it
    ...
    frame = reflex.next_bot_frame()                     # every 20 ms: what the caller may hear now

One reflex serves one call. The same object runs on two clocks: *live* (the default: models run on the process's
detector thread, Silero batched across calls, transcripts on the process's shared Whisper workers, decisions land on
the event loop) and *simulated*
(:meth:`Reflex.simulated`, the benchmark's media clock: each decision is stamped at its audio's end plus the compute
it really took). The server's call core, the benchmark and the Pipecat / LiveKit integrations
(:mod:`voicegate.integrations`) are all callers of this class.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from voicegate.asr.base import UtteranceAsr
from voicegate.asr.scheduler import AsrService
from voicegate.asr.turns import TurnService
from voicegate.audio.pcm import StreamResampler
from voicegate.config import PIPELINE_SAMPLE_RATE, AsrOptions, GateOptions, PlayoutOptions
from voicegate.events import EventBus, Listener, MediaClock, SimClock
from voicegate.gate.controller import DuplexController, DuplexState
from voicegate.gate.driver import GateModels, LiveGateDriver, OfflineGateDriver
from voicegate.gate.reflex import Gate, GateSink, ReflexGate
from voicegate.gate.relevance import RelevanceJudge
from voicegate.media.playout import PlayoutTrack, UtteranceReport
from voicegate.tts.base import Speech, Tts

__all__ = ["DuplexState", "Reflex"]

GateFactory = Callable[[GateOptions, GateSink, RelevanceJudge], Gate]


class _SilentTts:
    """The reflex is fed audio, not text: nothing here synthesizes."""

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate

    async def synthesize(self, text: str) -> Speech:
        raise RuntimeError("this reflex is fed the bot's audio (Reflex.feed_bot); it has no TTS")


class _RunListener:
    """Between the playout track and the controller: the chunks of one uninterrupted stretch of bot audio are one
    utterance to the controller (one ``bot.speaking``, one ``bot.done``)."""

    def __init__(self, controller: DuplexController, playout: PlayoutTrack) -> None:
        self.controller = controller
        self.playout = playout
        self.run_open = False

    def on_utterance_started(self, utterance_id: str, at_samples: int) -> None:
        if not self.run_open or self.controller.utterance_text(utterance_id):
            self.run_open = True
            self.controller.on_utterance_started(utterance_id, at_samples)

    def on_utterance_finished(self, report: UtteranceReport, at_samples: int) -> None:
        if report.interrupted or not self.playout.queued_samples:
            self.run_open = False
        self.controller.on_utterance_finished(report, at_samples)


class Reflex:
    """One call's reflex: pause on a sound, resume from the exact sample or stop, and the caller's turn.

    Args:
        options: the gate's thresholds (defaults: :class:`~voicegate.config.GateOptions`).
        bot_sample_rate: the rate of the frames :meth:`next_bot_frame` returns (the rate the bot's audio leaves
            at); audio fed at another rate is resampled.
        playout: frame length, fades and rewind of the bot's audio (``sample_rate`` is ``bot_sample_rate``).
        judge: the relevance model (default: the committed fastText model, shared per process).
        call_id: a label for logs and events.
        clock: the media clock events are stamped on (default: milliseconds since this object was made).
        tts: only for callers that also let the controller synthesize (the server's call core).
        echo_guard: run the echo canceller and guard on the bot's audio (turn off only when the caller's audio
            can never contain the bot's voice).
        events: an event bus to emit on (the server's call core shares its own); default: a new one on ``clock``.
    """

    def __init__(self, options: GateOptions | None = None, *, bot_sample_rate: int | None = None,
                 playout: PlayoutOptions | None = None, judge: RelevanceJudge | None = None,
                 call_id: str | None = None, clock: MediaClock | None = None, tts: Tts | None = None,
                 echo_guard: bool = True, events: EventBus | None = None) -> None:
        self.options = options or GateOptions()
        playout_options = playout or PlayoutOptions()
        if bot_sample_rate is not None:
            playout_options = replace(playout_options, sample_rate=bot_sample_rate)
        self.call_id = call_id or uuid.uuid4().hex[:8]
        self.clock = events.clock if events is not None else clock or MediaClock()
        self.events = events if events is not None else EventBus(self.clock, self.call_id, backlog=4096)
        self.playout = PlayoutTrack(playout_options)
        self.controller = DuplexController(self.playout, tts or _SilentTts(playout_options.sample_rate), self.events)
        self.controller.echo_similarity = self.options.echo_similarity
        self.controller.on_user_turn = self._turn
        self.controller.on_stop = self._stopped
        self._runs = _RunListener(self.controller, self.playout)
        self.playout.listener = self._runs
        self.judge = judge
        self.echo_guard = echo_guard
        self.models: GateModels | None = None
        self.gate: Gate | None = None
        self.driver: LiveGateDriver | OfflineGateDriver | None = None
        self._closed_driver: LiveGateDriver | OfflineGateDriver | None = None
        self.on_turn: Callable[[str], None] | None = None
        """Called with the caller's words once their turn has ended (after a stop, or while the bot was silent)."""
        self.on_stop: Callable[[], None] | None = None
        """Called once per real interruption, after the bot's queued audio has been dropped."""
        self.on_error: Callable[[str, str, str], None] | None = None
        """``(stage, cause, message)``: a component failed or is overloaded (also an ``error`` event)."""
        self.user_samples = 0
        """Caller samples fed so far, at 16 kHz."""
        self.played_bot_samples = 0
        """Bot samples played so far (at :attr:`bot_sample_rate`); a sample dropped by a stop never counts."""
        self._in: dict[int, StreamResampler] = {}
        self._out: dict[int, StreamResampler] = {}
        self._pending: list[np.ndarray] = []
        self._reply_ids = itertools.count(1)
        self._reply_id = "r1"
        self._asr: UtteranceAsr | None = None
        self._asr_options: AsrOptions | None = None

    # -- set-up ----------------------------------------------------------------------------------------------

    @classmethod
    def simulated(cls, asr: UtteranceAsr, options: GateOptions | None = None, *,
                  asr_options: AsrOptions | None = None, gate_factory: GateFactory | None = None,
                  **kwargs: Any) -> Reflex:
        """A reflex on a simulated media clock (benchmarks, tests): ``asr`` decodes through the server's queue
        rules on that clock, and :meth:`feed_user` takes the media time each chunk was complete. Ready at once
        (no :meth:`start`). ``gate_factory``: the benchmark's other policies in place of the reflex gate."""
        kwargs.setdefault("clock", SimClock())
        if not isinstance(kwargs["clock"], SimClock):
            raise TypeError("a simulated reflex needs a SimClock")
        reflex = cls(options, **kwargs)
        reflex._asr, reflex._asr_options = asr, asr_options
        reflex._attach(GateModels(reflex.options, reflex.playout.sample_rate, echo_guard=reflex.echo_guard),
                       reflex.judge if reflex.judge is not None else shared_judge(), gate_factory=gate_factory)
        return reflex

    async def start(self, asr: AsrService | None = None, turns: TurnService | None = None) -> None:
        """Load the detectors off the event loop (live clock); ``asr``: the transcript workers (default: the
        process's, shared by every call); ``turns``: a stronger transcriber for the caller's whole turns
        (:class:`~voicegate.asr.turns.TurnService`, e.g. ``turn_service(TurnOptions())`` for Whisper base; default
        none: the reflex's own final transcript is the turn). Idempotent."""
        if self.driver is not None:
            return
        loop = asyncio.get_running_loop()
        models = await loop.run_in_executor(None, lambda: GateModels(self.options, self.playout.sample_rate,
                                                                      echo_guard=self.echo_guard))
        judge = self.judge if self.judge is not None else await loop.run_in_executor(None, shared_judge)
        service = asr if asr is not None else await loop.run_in_executor(None, _shared_asr)
        self._attach(models, judge, service, turns=turns)

    def _attach(self, models: GateModels, judge: RelevanceJudge, service: AsrService | None = None,
                gate_factory: GateFactory | None = None, turns: TurnService | None = None) -> None:
        self.models = models
        self.judge = judge
        self.gate = (ReflexGate(self.options, self.controller, judge, lambda *args: None) if gate_factory is None
                     else gate_factory(self.options, self.controller, judge))
        if service is None:
            assert self._asr is not None
            self.driver = OfflineGateDriver(models, self.gate, self._asr, self._asr_options, on_error=self._error)
        else:
            self.driver = LiveGateDriver(models, self.gate, service, self.call_id, self.clock.now_ms, turns)
            self.driver.on_error = self._error
        if models.echo is not None:
            self.playout.frame_sink = models.add_outbound

    # -- the caller's audio ----------------------------------------------------------------------------------

    async def feed_user(self, pcm: np.ndarray, sample_rate: int, received_ms: float | None = None) -> None:
        """The caller's next chunk (mono s16 at ``sample_rate``), in order, without gaps.

        Live: ``received_ms`` is when it arrived on :attr:`clock` (default: now); decisions land on the running
        loop as soon as the models return. Simulated: ``received_ms`` is the media time the chunk was complete
        (default: the end of the audio fed so far) and the clock moves to it plus the compute time.
        """
        chunk = self._to_pipeline(pcm, sample_rate)
        self._flush_bot()
        if isinstance(self.driver, OfflineGateDriver):
            self.feed_user_simulated(chunk, PIPELINE_SAMPLE_RATE, received_ms, resampled=True)
            return
        self.user_samples += len(chunk)
        if self.driver is None:
            raise RuntimeError("Reflex.start() has not run")
        await self.driver.process(chunk, received_ms)

    def feed_user_simulated(self, pcm: np.ndarray, sample_rate: int, chunk_end_ms: float | None = None,
                            resampled: bool = False) -> None:
        """:meth:`feed_user` on the simulated clock, without a loop (the benchmark's frame loop)."""
        driver = self.driver
        if not isinstance(driver, OfflineGateDriver):
            raise RuntimeError("feed_user_simulated needs Reflex.simulated(...)")
        chunk = pcm if resampled else self._to_pipeline(pcm, sample_rate)
        self._flush_bot()
        self.user_samples += len(chunk)
        end_ms = 1000.0 * self.user_samples / PIPELINE_SAMPLE_RATE if chunk_end_ms is None else chunk_end_ms
        clock = self.clock
        assert isinstance(clock, SimClock)
        clock.t_ms = end_ms
        driver.feed(chunk, end_ms)
        clock.t_ms = driver.now_ms

    def advance(self, until_ms: float) -> None:
        """Simulated clock: move to ``until_ms`` and hand over every transcript ready by then."""
        if isinstance(self.driver, OfflineGateDriver):
            assert isinstance(self.clock, SimClock)
            if until_ms != float("inf"):
                self.clock.t_ms = until_ms
            self.driver.deliver(until_ms)

    def _to_pipeline(self, pcm: np.ndarray, sample_rate: int) -> np.ndarray:
        data = np.ascontiguousarray(pcm, dtype=np.int16).reshape(-1)
        if sample_rate == PIPELINE_SAMPLE_RATE:
            return data
        resampler = self._in.get(sample_rate)
        if resampler is None:
            resampler = self._in[sample_rate] = StreamResampler(sample_rate, PIPELINE_SAMPLE_RATE)
        return resampler(data)

    # -- the bot's audio -------------------------------------------------------------------------------------

    def feed_bot(self, pcm: np.ndarray, sample_rate: int, text: str = "") -> None:
        """Queue the bot's next audio (mono s16 at ``sample_rate``) behind what is queued; it plays from
        :meth:`next_bot_frame`. Feed as fast as it is made: the reflex keeps it while the bot is paused.

        ``text``: the words this audio says, when known — a transcript of the caller's sound that repeats them is
        the bot's own echo (verdict ``echo``), and ``bot.speaking`` carries them.
        """
        data = np.ascontiguousarray(pcm, dtype=np.int16).reshape(-1)
        if sample_rate != self.playout.sample_rate:
            resampler = self._out.get(sample_rate)
            if resampler is None:
                resampler = self._out[sample_rate] = StreamResampler(sample_rate, self.playout.sample_rate)
            data = resampler(data)
        if not data.size:
            return
        if text or (not self.controller.bot_active and not self._pending):
            self._flush_bot()
            self._queue(Speech(text, data, self.playout.sample_rate))
            return
        self._pending.append(data)

    def _queue(self, speech: Speech) -> None:
        if not self.controller.bot_active:
            self._reply_id = f"r{next(self._reply_ids)}"
        self.controller.queue_speech(speech, self._reply_id)

    def _flush_bot(self) -> None:
        if self._pending:
            data = self._pending[0] if len(self._pending) == 1 else np.concatenate(self._pending)
            self._pending.clear()
            self._queue(Speech("", data, self.playout.sample_rate))

    def bot_said(self, text: str) -> None:
        """The bot's audio now playing says ``text`` (for audio fed without it): a transcript of the caller's sound
        that repeats it is the bot's own echo."""
        if text.strip():
            self.controller.remember_bot_text(text)

    def next_bot_frame(self) -> np.ndarray:
        """The next ``playout.frame_ms`` of the bot's audio at :attr:`bot_sample_rate` — silence while paused or
        with nothing queued. Call it on a real-time clock (once per frame), as a transport sends."""
        self._flush_bot()
        before = self.playout.queued_samples
        frame = self.playout.next_frame()
        self.played_bot_samples += before - self.playout.queued_samples
        return frame

    def clear_bot(self) -> bool:
        """Drop the bot's queued audio on the host framework's behalf (its own interruption or a new reply); no
        ``bot.stopped`` event. Returns True when something was queued."""
        had = bool(self._pending) or self.playout.queued_samples > 0
        self._pending.clear()
        if had:
            self.playout.clear()
        if self.controller.state in (DuplexState.BOT_SPEAKING, DuplexState.PAUSED):
            self.controller.state = DuplexState.LISTENING
        return had

    def stop(self, reason: str = "external") -> bool:
        """Stop the bot as an interruption would (``bot.stopped``, :attr:`on_stop`); False when it was silent."""
        self._pending.clear()
        return self.controller.stop(reason)

    # -- state -----------------------------------------------------------------------------------------------

    @property
    def bot_sample_rate(self) -> int:
        """The rate of :meth:`next_bot_frame`."""
        return self.playout.sample_rate

    @property
    def frame_samples(self) -> int:
        """Samples per :meth:`next_bot_frame`."""
        return self.playout.frame_samples

    @property
    def state(self) -> DuplexState:
        """Who holds the floor."""
        return self.controller.state

    @property
    def paused(self) -> bool:
        """The bot's audio is held pending a verdict."""
        return self.controller.state is DuplexState.PAUSED

    @property
    def bot_active(self) -> bool:
        """The bot is speaking or paused."""
        return self.controller.bot_active or bool(self._pending)

    @property
    def queued_bot_samples(self) -> int:
        """Bot samples still to play (at :attr:`bot_sample_rate`)."""
        return self.playout.queued_samples + sum(len(p) for p in self._pending)

    @property
    def bot_position(self) -> int:
        """Where the end of the bot's queued audio will play: :attr:`played_bot_samples` + what is queued. Something
        that must follow the audio fed so far is due when :attr:`played_bot_samples` reaches it."""
        return self.played_bot_samples + self.queued_bot_samples

    @property
    def cpu_ms(self) -> dict[str, float]:
        """Compute spent per stage so far (``vad``, ``kws``, ``echo``, ``asr``), in ms."""
        driver = self.driver or self._closed_driver
        return dict(driver.cpu_ms) if driver is not None else {}

    def add_listener(self, listener: Listener, replay: bool = False) -> None:
        """Receive every event (a dict with ``type`` and ``t_ms``)."""
        self.events.add_listener(listener, replay)

    # -- internals -------------------------------------------------------------------------------------------

    def _turn(self, text: str) -> None:
        if self.on_turn is not None:
            self.on_turn(text)

    def _stopped(self) -> None:
        self._pending.clear()
        if self.on_stop is not None:
            self.on_stop()

    def _error(self, stage: str, cause: str, message: str) -> None:
        self.events.emit("error", stage=stage, cause=cause, message=message)
        if self.on_error is not None:
            self.on_error(stage, cause, message)

    def detach_gate(self) -> None:
        """Stop deciding (a detector failed): the bot's audio still plays, barge-in is off for this call."""
        driver, self.driver = self.driver, None
        self._closed_driver = self._closed_driver or driver
        if isinstance(driver, LiveGateDriver):
            driver.close()

    def close(self) -> None:
        """Release the call's thread, its echo canceller and its queued transcripts (idempotent)."""
        self.playout.stop()
        driver, self.driver = self.driver, None
        self._closed_driver = self._closed_driver or driver
        if isinstance(driver, LiveGateDriver):
            driver.close()
        elif isinstance(driver, OfflineGateDriver):
            driver.deliver(float("inf"))


@functools.cache
def shared_judge() -> RelevanceJudge:
    """The relevance model, loaded once per process and shared by every reflex."""
    from voicegate.gate.relevance import load_judge

    return load_judge()


def _shared_asr() -> AsrService:
    from voicegate.gate.driver import asr_service

    return asr_service()
