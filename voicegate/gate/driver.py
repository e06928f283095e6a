"""Drivers that run the gate's models and feed :class:`ReflexGate`.

:class:`GateModels` holds one call's detectors (VAD state, keyword spotter, echo guard, inbound ring buffer).
:class:`LiveGateDriver` runs them off the event loop for the server; :class:`OfflineGateDriver` runs them
synchronously for tests and the benchmark, stamping every decision in media time *plus the compute time it
really took*.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from voicegate.asr.base import Transcript, UtteranceAsr
from voicegate.asr.kws import KeywordHit, KeywordSpotter
from voicegate.audio.echo import EchoGuard
from voicegate.audio.vad import WINDOW_SAMPLES, VadDetector, VadWindow, dbfs_window
from voicegate.config import PIPELINE_SAMPLE_RATE, GateOptions
from voicegate.gate.reflex import Gate
from voicegate.tasks import TaskOwner

log = logging.getLogger(__name__)
RING_SECS = 20
ECHO_HOLD_WINDOWS = 10
ECHO_LEVEL_MARGIN_DB = 3.0


@dataclass
class StepResult:
    """What the models made of one inbound chunk."""

    windows: list[VadWindow] = field(default_factory=list)
    echo_scores: list[float] = field(default_factory=list)
    hits: list[KeywordHit] = field(default_factory=list)
    vad_ms: float = 0.0
    kws_ms: float = 0.0
    echo_ms: float = 0.0


class GateModels:
    """One call's detectors; :meth:`step` is blocking and must only ever run on one thread at a time."""

    def __init__(self, options: GateOptions, playout_sample_rate: int, echo_guard: bool = True) -> None:
        self.options = options
        self.vad = VadDetector(options)
        self.kws = KeywordSpotter(options.stop_phrases)
        self.echo = EchoGuard(playout_sample_rate) if echo_guard else None
        self._pending = np.zeros(0, dtype=np.int16)
        self._ring = np.zeros(PIPELINE_SAMPLE_RATE * RING_SECS, dtype=np.int16)
        self.position = 0
        self._echo_windows: deque[tuple[float, float]] = deque(maxlen=ECHO_HOLD_WINDOWS)

    def step(self, pcm: np.ndarray, hangover_ms: float) -> StepResult:
        """Run VAD (per 512-sample window), the echo guard and the keyword spotter over ``pcm``."""
        result = StepResult()
        self._remember(pcm)
        t0 = time.perf_counter()
        result.hits = self.kws.feed(pcm)
        t1 = time.perf_counter()
        result.kws_ms = (t1 - t0) * 1000
        self._pending = np.concatenate([self._pending, pcm])
        while len(self._pending) >= WINDOW_SAMPLES:
            window, self._pending = self._pending[:WINDOW_SAMPLES], self._pending[WINDOW_SAMPLES:]
            t2 = time.perf_counter()
            score = self.echo.score(window) if self.echo is not None else 0.0
            t3 = time.perf_counter()
            result.echo_ms += (t3 - t2) * 1000
            is_echo = self._is_echo(window, score)
            result.windows.append(self.vad.step(window, is_echo, hangover_ms))
            result.echo_scores.append(score)
            result.vad_ms += (time.perf_counter() - t3) * 1000
        return result

    def _is_echo(self, window: np.ndarray, score: float) -> bool:
        """Correlated with what the bot just said, or no louder than the echo heard in the last ~300 ms.

        Correlation dips inside quiet stretches of echoed speech (sentence tails, codec noise); those windows are
        still echo when they are no louder than the correlated echo just before them. A user talking over the
        echo is louder than it, so they still count.
        """
        level = dbfs_window(window)
        threshold = self.options.echo_correlation
        recent = [lvl for s, lvl in self._echo_windows if s >= threshold]
        self._echo_windows.append((score, level))
        if score >= threshold:
            return True
        return bool(recent) and level <= max(recent) + ECHO_LEVEL_MARGIN_DB

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
        indices = np.arange(start, end) % size
        return self._ring[indices]


_ASR_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="voicegate-asr")
"""Whisper decodes are serialised process-wide: the model already uses two threads per decode."""


class LiveGateDriver:
    """Feeds a call's inbound chunks through the models (in the call's own thread) and the gate (on the loop)."""

    def __init__(self, models: GateModels, gate: Gate, asr: UtteranceAsr, tasks: TaskOwner,
                 now_ms: Callable[[], float]) -> None:
        self.models = models
        self.gate = gate
        self.asr = asr
        self.tasks = tasks
        self.now_ms = now_ms
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="voicegate-call")
        gate.request_transcript = self._request
        self.cpu_ms = {"vad": 0.0, "kws": 0.0, "echo": 0.0, "asr": 0.0}
        self.on_error: Callable[[str, Exception], None] | None = None

    async def process(self, pcm: np.ndarray, received_ms: float | None = None) -> None:
        """Run one chunk; decisions are applied on the event loop as soon as the models return."""
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self.executor, self.models.step, pcm, self.gate.hangover_ms)
        if received_ms is not None:
            self.gate.input_lag_ms = max(0.0, self.now_ms() - received_ms)
        self.cpu_ms["vad"] += result.vad_ms
        self.cpu_ms["kws"] += result.kws_ms
        self.cpu_ms["echo"] += result.echo_ms
        now = self.now_ms()
        for hit in result.hits:
            self.gate.on_keyword(hit, now)
        for window in result.windows:
            self.gate.on_window(window, now)

    def _request(self, segment_id: int, start: int, end: int, final: bool) -> None:
        audio = self.models.audio(start, end)
        self.tasks.spawn(self._transcribe(segment_id, audio, final, end), f"asr-{segment_id}")

    async def _transcribe(self, segment_id: int, audio: np.ndarray, final: bool, end: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            transcript = await loop.run_in_executor(_ASR_POOL, self.asr.transcribe, audio)
        except Exception as exc:
            log.exception("ASR failed on segment %d", segment_id)
            if self.on_error is not None:
                self.on_error("asr", exc)
            transcript = Transcript("", 0.0, final, 0.0)
        self.cpu_ms["asr"] += transcript.compute_ms
        transcript = Transcript(transcript.text, transcript.confidence, final, transcript.compute_ms)
        self.gate.on_transcript(segment_id, transcript, self.now_ms(), end)

    def close(self) -> None:
        """Release the call's thread."""
        self.executor.shutdown(wait=False, cancel_futures=True)


class OfflineGateDriver:
    """Synchronous driver on a simulated media clock (tests, benchmark).

    The gate sees each window at ``chunk end + compute time``; a transcript arrives ``compute_ms`` after it was
    requested. Results that are due are delivered before each new chunk.
    """

    def __init__(self, models: GateModels, gate: Gate, asr: UtteranceAsr) -> None:
        self.models = models
        self.gate = gate
        self.asr = asr
        self._due: list[tuple[float, int, Transcript, int]] = []
        self.now_ms = 0.0
        self.cpu_ms = {"vad": 0.0, "kws": 0.0, "echo": 0.0, "asr": 0.0}
        self.trace: list[tuple[float, float, bool]] = []
        """(media ms at the window's end, VAD probability, voiced) per window."""
        gate.request_transcript = self._request

    def feed(self, pcm: np.ndarray, chunk_end_ms: float) -> None:
        """Process one chunk that was fully received at ``chunk_end_ms``."""
        self.deliver(chunk_end_ms)
        result = self.models.step(pcm, self.gate.hangover_ms)
        self.gate.input_lag_ms = result.vad_ms + result.kws_ms + result.echo_ms
        for key, value in (("vad", result.vad_ms), ("kws", result.kws_ms), ("echo", result.echo_ms)):
            self.cpu_ms[key] += value
        self.now_ms = chunk_end_ms + result.vad_ms + result.kws_ms + result.echo_ms
        for hit in result.hits:
            self.gate.on_keyword(hit, self.now_ms)
        for window in result.windows:
            self.trace.append((window.end_samples / 16.0, window.prob, window.voiced))
            self.gate.on_window(window, self.now_ms)

    def deliver(self, until_ms: float) -> None:
        """Hand over every transcript ready by ``until_ms``."""
        self._due.sort(key=lambda item: item[0])
        while self._due and self._due[0][0] <= until_ms:
            ready_ms, segment_id, transcript, end = self._due.pop(0)
            self.gate.on_transcript(segment_id, transcript, ready_ms, end)

    def _request(self, segment_id: int, start: int, end: int, final: bool) -> None:
        transcript = self.asr.transcribe(self.models.audio(start, end))
        self.cpu_ms["asr"] += transcript.compute_ms
        ready = self.now_ms + transcript.compute_ms
        self._due.append((ready, segment_id, Transcript(transcript.text, transcript.confidence, final,
                                                        transcript.compute_ms), end))


@functools.cache
def default_asr() -> UtteranceAsr:
    """Vosk when a model is configured/found, else Whisper tiny.en (loaded once per process)."""
    from voicegate.asr.vosk import VoskAsr, find_vosk_model
    from voicegate.asr.whisper import WhisperAsr

    path = find_vosk_model()
    return VoskAsr(path) if path is not None else WhisperAsr()
