"""Drivers that run the gate's models and feed :class:`ReflexGate`.

:class:`GateModels` holds one call's detectors (VAD state, keyword spotter, echo guard, inbound ring buffer).
:class:`LiveGateDriver` runs them off the event loop for the server; :class:`OfflineGateDriver` runs them
synchronously for tests and the benchmark, stamping every decision in media time *plus the compute time it
really took*.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from voicegate.asr.base import Transcript, UtteranceAsr
from voicegate.asr.kws import KeywordHit, KeywordSpotter
from voicegate.asr.scheduler import AsrRequest, AsrService, SimulatedAsr
from voicegate.asr.turns import CallTurns, TurnService
from voicegate.audio.echo import EchoControl
from voicegate.audio.vad import (
    WINDOW_SAMPLES,
    VadAnswer,
    VadDetector,
    VadQuery,
    VadWindow,
    dbfs_window,
    silero_batch,
)
from voicegate.config import PIPELINE_SAMPLE_RATE, AsrOptions, GateOptions, Options, TurnOptions, options_from_env
from voicegate.gate.detectors import DetectorThread, Job, detector_thread
from voicegate.gate.reflex import Gate

log = logging.getLogger(__name__)
RING_SECS = 20
QUIET_AFTER_LOUD_SAMPLES = PIPELINE_SAMPLE_RATE * 4 // 10
"""A chunk this soon (400 ms) after one at speech level still runs at once (its window may hold speech; the spotter
reports a phrase after it ends)."""
ECHO_FAILED = "the echo canceller kept diverging: the gate falls back to the echo guard alone for this call"


@dataclass
class StepResult:
    """What the models made of one inbound chunk."""

    windows: list[VadWindow] = field(default_factory=list)
    echo_scores: list[float] = field(default_factory=list)
    hits: list[KeywordHit] = field(default_factory=list)
    vad_ms: float = 0.0
    kws_ms: float = 0.0
    echo_ms: float = 0.0
    aec_ms: float = 0.0
    erle_db: float | None = None
    echo_failed: bool = False
    """The canceller gave up in this chunk (reported once): the gate is back on the echo guard alone."""
    echo_settling: bool = False
    """The bot is audible and the canceller has not yet learned the echo path."""


class GateModels:
    """One call's detectors; :meth:`step` is blocking and must only ever run on one thread at a time.

    The microphone first goes through the echo canceller (:class:`~voicegate.audio.echo.EchoControl`); VAD, the
    keyword spotter and the transcript ring get the cleaned signal, the echo guard the raw one.
    """

    def __init__(self, options: GateOptions, playout_sample_rate: int, echo_guard: bool = True) -> None:
        self.options = options
        self.vad = VadDetector(options)
        self.kws = KeywordSpotter(options.stop_phrases, quiet_dbfs=options.min_speech_dbfs)
        self.echo = EchoControl(playout_sample_rate, options.echo_correlation, cancel=options.echo_cancel) \
            if echo_guard else None
        self._raw = np.zeros(0, dtype=np.int16)
        self._clean = np.zeros(0, dtype=np.int16)
        self._ring = np.zeros(PIPELINE_SAMPLE_RATE * RING_SECS, dtype=np.int16)
        self.position = 0
        self.echo_failed_reported = False
        self.kws_enabled = True
        """Set from the event loop: False while the bot is silent (nothing to stop), which skips the spotter."""
        self._kws_was_enabled = True

    def add_outbound(self, pcm: np.ndarray) -> None:
        """Record one outbound frame as it is sent (the echo reference); any thread."""
        if self.echo is not None:
            self.echo.add_outbound(pcm)

    def step(self, pcm: np.ndarray, hangover_ms: float) -> StepResult:
        """Cancel the echo, then run VAD (per 512-sample window, each through Silero alone) with the echo guard,
        then the keyword spotter."""
        steps = self.steps(pcm, hangover_ms)
        try:
            query = next(steps)
            while True:
                if isinstance(query, StepResult):  # the windows are decided; the spotter's turn
                    query = steps.send(None)
                    continue
                t0 = time.perf_counter()
                (prob, state), = silero_batch([query])
                query = steps.send(VadAnswer(prob, state, (time.perf_counter() - t0) * 1000))
        except StopIteration as done:
            result: StepResult = done.value
            return result

    def steps(self, pcm: np.ndarray, hangover_ms: float, kws_enabled: bool | None = None,
              outbound_samples: int | None = None) -> Generator[VadQuery | StepResult, VadAnswer | None, StepResult]:
        """:meth:`step` as a generator, so that the caller can run many calls' windows in one ONNX run and put the
        windows before the spotter (:class:`~voicegate.gate.detectors.DetectorThread`): it yields each window's
        Silero input and is sent back its answer; then it yields the result with the chunk's windows (a pause may
        start on them: the caller can apply them now) and is sent ``None``; then the keyword spotter runs on the
        chunk and the result, hits added, is returned. The same steps in the same order as :meth:`step`, so the
        same result. ``kws_enabled``: the spotter's switch as it was when the chunk arrived (default
        :attr:`kws_enabled` now); ``outbound_samples``: the bot's audio sent by then (the echo canceller's anchor,
        :meth:`~voicegate.audio.echo.EchoControl.outbound_samples`; default: now)."""
        if kws_enabled is not None:
            self.kws_enabled = kws_enabled
        result = StepResult()
        t0 = time.perf_counter()
        if self.echo is not None:
            self.echo.near_end = self.vad.speaking
            raw, clean = self.echo.cancel(pcm, outbound_samples)
        else:
            raw = clean = pcm
        result.aec_ms = (time.perf_counter() - t0) * 1000
        self._remember(clean)
        self._raw = np.concatenate([self._raw, raw])
        self._clean = np.concatenate([self._clean, clean])
        consumed = 0
        while len(self._clean) - consumed >= WINDOW_SAMPLES:
            window = self._clean[consumed:consumed + WINDOW_SAMPLES]
            raw_window = self._raw[consumed:consumed + WINDOW_SAMPLES]
            consumed += WINDOW_SAMPLES
            t3 = time.perf_counter()
            end = self.position - (len(self._clean) - consumed)
            score, is_echo, doubtful = 0.0, False, False
            if self.echo is not None:
                if self.echo.aec is None and self.echo.too_quiet(raw_window):
                    self.echo.skip(raw_window)
                else:
                    score = self.echo.score(raw_window, end)
                    is_echo = self.echo.is_echo(raw_window, window, score)
                    doubtful = self.echo.doubtful
            t4 = time.perf_counter()
            result.echo_ms += (t4 - t3) * 1000
            query = self.vad.vad.query(window)
            result.vad_ms += (time.perf_counter() - t4) * 1000
            answer = yield query
            assert answer is not None, "a window's query is answered with its Silero result"
            t5 = time.perf_counter()
            self.vad.vad.commit(answer.state)
            result.windows.append(self.vad.decide(window, answer.prob, is_echo, hangover_ms, doubtful))
            result.echo_scores.append(score)
            result.vad_ms += (time.perf_counter() - t5) * 1000 + answer.compute_ms
        self._raw, self._clean = self._raw[consumed:], self._clean[consumed:]
        aec = self.echo.aec if self.echo is not None else None
        if aec is not None:
            result.erle_db = aec.erle_db
            result.echo_settling = aec.settling
            if aec.failed and not self.echo_failed_reported:
                self.echo_failed_reported = True
                result.echo_failed = True
        yield result  # the windows, before the spotter: its work (PocketSphinx on speech) never delays a pause
        t1 = time.perf_counter()
        if self.kws_enabled and not self._kws_was_enabled:
            self.kws.reset()  # the bot speaks again: spot from a fresh utterance
        self._kws_was_enabled = self.kws_enabled
        if not len(clean):
            result.hits = []
        elif not self.kws_enabled:
            # The bot is silent: no stop phrase to spot. (The spotter still hears silences while the bot talks:
            # skipping them changed what it spotted — 8 stops instead of 15 on the full corpus.)
            self.kws.skip(len(clean))
            result.hits = []
        else:
            result.hits = self.kws.feed(clean)
        result.kws_ms = (time.perf_counter() - t1) * 1000
        return result

    def remember(self, pcm: np.ndarray) -> None:
        """Keep a chunk for transcription without running the detectors (a benchmark peer runs its own)."""
        self._remember(pcm)

    def _remember(self, pcm: np.ndarray) -> None:
        size = len(self._ring)
        data = pcm[-size:]
        at = (self.position + len(pcm) - len(data)) % size
        first = min(len(data), size - at)
        self._ring[at:at + first] = data[:first]
        self._ring[:len(data) - first] = data[first:]
        self.position += len(pcm)

    def audio(self, start_samples: int, end_samples: int) -> np.ndarray:
        """The inbound audio between two stream positions (clipped to the last 20 s)."""
        size = len(self._ring)
        start = max(start_samples, self.position - size, 0)
        end = min(end_samples, self.position)
        if end <= start:
            return np.zeros(0, dtype=np.int16)
        a, b = start % size, end % size
        if a < b:
            return self._ring[a:b].copy()
        return np.concatenate([self._ring[a:], self._ring[:b]])


class LiveGateDriver:
    """Feeds a call's inbound chunks through the models (on the process's
    :class:`~voicegate.gate.detectors.DetectorThread`, Silero batched with the other calls) and the gate (on the
    loop).

    Transcripts are decoded by the process's :class:`~voicegate.asr.scheduler.AsrService`; results hop back to
    the event loop with ``call_soon_threadsafe``.
    """

    def __init__(self, models: GateModels, gate: Gate, service: AsrService, call_id: str,
                 now_ms: Callable[[], float], turn_service: TurnService | None = None,
                 detectors: DetectorThread | None = None) -> None:
        self.models = models
        self.gate = gate
        self.service = service
        self.call_id = call_id
        self.now_ms = now_ms
        self.detectors = detectors or detector_thread()
        gate.request_transcript = self._request
        self.cpu_ms = {"vad": 0.0, "kws": 0.0, "echo": 0.0, "asr": 0.0}
        self.on_error: Callable[[str, str, str], None] | None = None
        """``(stage, cause, message)`` for a component that failed or is overloaded."""
        self.on_cpu: Callable[[str, float, float | None], None] | None = None
        """``(stage, compute ms, queue wait ms)`` after each chunk and each decode (metrics)."""
        self.on_lag: Callable[[float], None] | None = None
        """For each chunk that ran at once (it could start speech): ms from its arrival to its VAD windows applied on
        the loop — the detector thread's share of a pause (metrics)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._failure: BaseException | None = None
        self._since_loud_samples = QUIET_AFTER_LOUD_SAMPLES  # nothing loud yet
        self.applied_chunks = 0
        """Chunks whose results the gate has received."""
        self.ran_at_once = True
        """The last chunk could be speech and ran at once (False: it was queued for the detector thread's tick)."""
        self.turns: CallTurns | None = None
        """The call's turn transcriber (``None`` when the reflex's final transcript is the turn)."""
        if turn_service is not None and hasattr(gate, "turns"):
            self.turns = CallTurns(turn_service, models.audio, call_id, self._turn_error)
            gate.turns = self.turns

    def _turn_error(self, stage: str, cause: str, message: str) -> None:
        if self.on_error is not None:
            self.on_error(stage, cause, message)

    async def process(self, pcm: np.ndarray, received_ms: float | None = None) -> None:
        """Run one chunk. A chunk that could be speech (:meth:`could_be_speech`) wakes the detector thread at once and
        its decisions are applied on the loop before this returns; a quiet one is queued for the thread's next tick
        (the idle tick when the gate has nothing in progress: ``gate.idle``) and this returns at once (its results
        are applied, in order, when they come). Raises what the models raised on this chunk or on an earlier quiet
        one."""
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure
        loop = self._loop = asyncio.get_running_loop()
        kws = spotter_wanted(self.gate)
        self.ran_at_once = self.could_be_speech(pcm)
        idle = not self.ran_at_once and bool(getattr(self.gate, "idle", False))
        outbound = self.models.echo.outbound_samples() if self.models.echo is not None else None
        finished: asyncio.Future[None] | None = loop.create_future() if self.ran_at_once else None
        # A chunk that could start speech has its windows applied the moment they are decided (``early``); a quiet
        # one's come with the rest of its result, in the drain's one hand-off.
        early = functools.partial(self._windows, received_ms, True) if self.ran_at_once else None
        self.detectors.submit(Job(self.models, pcm, self.gate.hangover_ms, loop,
                                  functools.partial(self._deliver, finished, received_ms), kws_enabled=kws,
                                  urgent=self.ran_at_once, idle=idle, outbound_samples=outbound, early=early))
        if finished is not None:
            await finished

    def could_be_speech(self, pcm: np.ndarray) -> bool:
        """Whether this chunk's results could start speech or a decision soon: it is at least ``min_speech_dbfs``
        (the VAD's hard floor: a window of quieter chunks is never voiced), or one was in the last
        :data:`QUIET_AFTER_LOUD_SAMPLES`, or the VAD is in speech (its end, the spotter's late hits)."""
        if dbfs_window(pcm) >= self.models.options.min_speech_dbfs:
            self._since_loud_samples = 0
        else:
            self._since_loud_samples += len(pcm)
        return self._since_loud_samples < QUIET_AFTER_LOUD_SAMPLES or self.models.vad.speaking

    def _windows(self, received_ms: float | None, urgent: bool, result: StepResult) -> None:
        """On the loop: a chunk's VAD windows (and echo figures), as soon as they are decided — before the keyword
        spotter has run on the chunk (:meth:`GateModels.steps`)."""
        if self._closed:
            return
        self.applied_chunks += 1
        if received_ms is not None:
            self.gate.input_lag_ms = max(0.0, self.now_ms() - received_ms)
            if urgent and self.on_lag is not None:
                self.on_lag(self.gate.input_lag_ms)
        for stage, ms in (("vad", result.vad_ms), ("echo", result.echo_ms + result.aec_ms)):
            self.cpu_ms[stage] += ms
            if self.on_cpu is not None:
                self.on_cpu(stage, ms, None)
        if result.echo_failed and self.on_error is not None:
            self.on_error("echo", "diverged", ECHO_FAILED)
        now = self.now_ms()
        self.gate.echo_settling = result.echo_settling
        for window in result.windows:
            self.gate.on_window(window, now)

    def _deliver(self, finished: asyncio.Future[None] | None, received_ms: float | None, result: StepResult | None,
                 exc: BaseException | None) -> None:
        """On the loop: the rest of a chunk's results — its windows too for a quiet chunk (``finished`` None: not
        awaited, no early hand-off), then the spotter's hits; its failure goes to the awaiting :meth:`process`, or
        (a quiet chunk) to the next one."""
        if result is not None and not self._closed:
            if finished is None:
                self._windows(received_ms, False, result)
            self.cpu_ms["kws"] += result.kws_ms
            if self.on_cpu is not None:
                self.on_cpu("kws", result.kws_ms, None)
            now = self.now_ms()
            for hit in result.hits:
                self.gate.on_keyword(hit, now)
        if finished is None:
            if exc is not None and self._failure is None:
                self._failure = exc
        elif not finished.done():
            if exc is not None:
                finished.set_exception(exc)
            else:
                finished.set_result(None)

    def _request(self, segment_id: int, start: int, end: int, final: bool) -> None:
        self.service.submit(AsrRequest(self.call_id, segment_id, end, final, self.models.audio(start, end),
                                       self._from_worker))

    def _from_worker(self, req: AsrRequest, transcript: Transcript | None, cause: str | None) -> None:
        loop = self._loop
        if loop is None or self._closed or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._result, req, transcript, cause)
        except RuntimeError:  # the loop closed meanwhile
            pass

    def _result(self, req: AsrRequest, transcript: Transcript | None, cause: str | None) -> None:
        if self._closed:
            return
        if transcript is not None and self.on_cpu is not None:
            wait = req.started_ms - req.requested_ms if req.started_ms is not None else None
            self.on_cpu("asr", transcript.compute_ms, wait)
        deliver_result(self.gate, self.cpu_ms, req, transcript, cause, self.now_ms(), self.on_error)

    def close(self) -> None:
        """Stop applying results; release the echo canceller and whatever the call still had queued for
        transcription."""
        self._closed = True
        self.service.drop_call(self.call_id)
        if self.turns is not None:
            self.turns.close()
        if self.models.echo is not None:
            # On the detector thread, after any step of this call in flight: the native canceller must not vanish
            # under it.
            self.detectors.submit(Job(self.models, None, 0.0, None, None, action=self.models.echo.close))


def spotter_wanted(gate: Gate) -> bool:
    """Stop phrases only count while the bot speaks or waits on a verdict; otherwise the spotter can rest."""
    sink = getattr(gate, "sink", None)
    return True if sink is None else bool(sink.bot_active)


def deliver_result(gate: Gate, cpu_ms: dict[str, float], req: AsrRequest, transcript: Transcript | None,
                   cause: str | None, t_ms: float, on_error: Callable[[str, str, str], None] | None) -> None:
    """Hand a decode's outcome to the gate (shared by the live and the offline driver)."""
    if transcript is not None:
        cpu_ms["asr"] += transcript.compute_ms
        gate.on_transcript(req.segment_id, replace(transcript, final=req.final), t_ms, req.end_samples)
        return
    if cause == "superseded" or cause == "closed":
        return  # a newer request covers the same audio
    if on_error is not None and req.final:  # a lost partial only means fewer partials; a lost final is news
        message = ("transcripts are queued too long: deciding on VAD and stop phrases alone" if cause == "overloaded"
                   else f"the ASR engine failed on this segment ({req.error})")
        on_error("asr", cause or "error", message)
    gate.on_transcript_failed(req.segment_id, req.end_samples, cause or "error", t_ms)


class OfflineGateDriver:
    """Synchronous driver on a simulated media clock (tests, benchmark).

    The gate sees each window at ``chunk end + compute time``. Transcripts go through the same queue as in the
    server (:class:`~voicegate.asr.scheduler.SimulatedAsr`): a request waits for the decodes before it, and its
    result arrives when its decode, measured on this machine, would have finished.
    """

    def __init__(self, models: GateModels, gate: Gate, asr: UtteranceAsr, asr_options: AsrOptions | None = None,
                 on_error: Callable[[str, str, str], None] | None = None) -> None:
        opts = asr_options or AsrOptions()
        self.models = models
        self.gate = gate
        self.sim = SimulatedAsr(asr, opts.workers, opts.max_wait_ms)
        self.now_ms = 0.0
        self.cpu_ms = {"vad": 0.0, "kws": 0.0, "echo": 0.0, "asr": 0.0}
        self.trace: list[tuple[float, float, bool]] = []
        """(media ms at the window's end, VAD probability, voiced) per window."""
        self.erle_trace: list[tuple[float, float]] = []
        """(media ms, the canceller's smoothed ERLE in dB) per chunk."""
        self.requests: list[tuple[float, int, bool]] = []
        """(media ms, audio samples, final) per transcript request."""
        self.on_error = on_error
        self.chunk_cost_ms: float | None = None
        """When set, every chunk's compute time on the media clock, instead of the measured one (the benchmark's
        modelled clock: decisions then depend on the audio and the numerics alone, not on this machine's load)."""
        gate.request_transcript = self._request

    def feed(self, pcm: np.ndarray, chunk_end_ms: float) -> None:
        """Process one chunk that was fully received at ``chunk_end_ms``."""
        self.deliver(chunk_end_ms)
        if getattr(self.gate, "wants_audio", False):
            self._feed_peer(pcm, chunk_end_ms)
            return
        self.models.kws_enabled = spotter_wanted(self.gate)
        result = self.models.step(pcm, self.gate.hangover_ms)
        windows_ms = result.vad_ms + result.echo_ms + result.aec_ms
        compute_ms = windows_ms + result.kws_ms
        if self.chunk_cost_ms is not None:
            windows_ms = compute_ms = self.chunk_cost_ms
        self.gate.input_lag_ms = windows_ms
        for key, value in (("vad", result.vad_ms), ("kws", result.kws_ms), ("echo", result.echo_ms + result.aec_ms)):
            self.cpu_ms[key] += value
        if result.erle_db is not None:
            self.erle_trace.append((chunk_end_ms, result.erle_db))
        if result.echo_failed and self.on_error is not None:
            self.on_error("echo", "diverged", ECHO_FAILED)
        # As live: the windows land when they are decided, the spotter's hits after its work on the chunk.
        self.now_ms = chunk_end_ms + windows_ms
        self.sim.now_ms = max(self.sim.now_ms, self.now_ms)
        self.gate.echo_settling = result.echo_settling
        for window in result.windows:
            self.trace.append((window.end_samples / 16.0, window.prob, window.voiced))
            self.gate.on_window(window, self.now_ms)
        self.now_ms = chunk_end_ms + compute_ms
        self.sim.now_ms = max(self.sim.now_ms, self.now_ms)
        for hit in result.hits:
            self.gate.on_keyword(hit, self.now_ms)

    def _feed_peer(self, pcm: np.ndarray, chunk_end_ms: float) -> None:
        """A benchmark peer with its own VAD gets the raw chunk; its decisions land after its compute time."""
        gate: Any = self.gate
        self.models.remember(pcm)
        compute_ms = float(gate.on_audio(pcm, chunk_end_ms))
        self.cpu_ms["vad"] += compute_ms
        self.now_ms = chunk_end_ms + compute_ms
        self.sim.now_ms = max(self.sim.now_ms, self.now_ms)
        gate.apply(self.now_ms)

    def deliver(self, until_ms: float) -> None:
        """Hand over every transcript ready by ``until_ms``."""
        self.sim.advance(until_ms)

    def _request(self, segment_id: int, start: int, end: int, final: bool) -> None:
        self.requests.append((self.sim.now_ms, end - start, final))
        self.sim.submit(AsrRequest("offline", segment_id, end, final, self.models.audio(start, end), self._result))

    def _result(self, req: AsrRequest, transcript: Transcript | None, cause: str | None) -> None:
        deliver_result(self.gate, self.cpu_ms, req, transcript, cause, self.sim.now_ms, self.on_error)


def make_asr(engine: str, options: Options) -> UtteranceAsr:
    """An ASR engine by name: ``whisper``, ``whisper-padded``, ``vosk`` or ``auto``."""
    from voicegate.asr.vosk import VoskAsr, find_vosk_model
    from voicegate.asr.whisper import PaddedWhisperAsr, WhisperAsr

    if engine == "whisper":
        return WhisperAsr(options.asr)
    if engine == "whisper-padded":
        return PaddedWhisperAsr(options.asr.threads)
    if engine in ("vosk", "auto"):
        path = find_vosk_model(options.vosk_model)
        if path is not None:
            return VoskAsr(path)
        if engine == "vosk":
            raise ValueError("no Vosk model: run `make models` where reachable, or set VOICEGATE_VOSK_MODEL")
        return WhisperAsr(options.asr)
    raise ValueError(f"unknown ASR engine {engine!r}: choose auto, whisper, whisper-padded or vosk")


@functools.cache
def default_asr() -> UtteranceAsr:
    """The engine ``VOICEGATE_ASR_ENGINE`` names (default: Vosk when a model is found, else Whisper tiny.en)."""
    options = options_from_env()
    return make_asr(options.asr.engine, options)


@functools.cache
def turn_service(options: TurnOptions) -> TurnService | None:
    """The process's turn transcriber for ``options`` (``None`` for the ``reflex`` engine), warming up in the
    background."""
    if options.engine == "reflex":
        return None
    service = TurnService(options)
    service.warm_up()
    return service


@functools.cache
def asr_service() -> AsrService:
    """The process's transcript workers, shared by every call."""
    options = options_from_env()
    return AsrService(default_asr(), options.asr.workers, options.asr.max_wait_ms)
