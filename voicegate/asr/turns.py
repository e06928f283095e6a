"""The turn transcriber: the user's whole turn, transcribed once by a stronger engine, for the agent.

The reflex decides on a small, fast engine (Whisper ``tiny.en`` in 30–90 ms); what the agent receives and the
history records is transcribed again here, on the turn's audio from its first segment to the start of the
end-of-turn silence, by Whisper ``base`` (or an OpenAI-compatible ``audio.transcriptions`` endpoint):

    gate ── silence begins ──▶ CallTurns.speculate(start, end) ──▶ TurnService (own threads, niced)
    gate ── turn confirmed ──▶ CallTurns.finish(start, end, deliver) ──▶ the same decode, or a new one ──▶ agent

In the common case the decode started when the silence began is ready when the turn is confirmed
(``end_of_turn_ms`` later). It never runs on the reflex's workers or the event loop, and its threads run at a lower
priority (:attr:`~voicegate.config.TurnOptions.nice`), so under load a pause, a verdict or a resume wins the CPU.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import queue
import threading
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from voicegate.asr.base import Transcript, UtteranceAsr
from voicegate.audio.vad import WINDOW_SAMPLES
from voicegate.config import PIPELINE_SAMPLE_RATE, AsrOptions, TurnOptions

log = logging.getLogger(__name__)

LOCAL_ENGINES = ("whisper-base", "whisper-tiny")


def local_turn_engine(options: TurnOptions, engine: str | None = None) -> UtteranceAsr:
    """A local Whisper engine for whole turns (blocking: build and use it on a turn worker thread)."""
    from voicegate.asr.models import whisper_base_dir
    from voicegate.asr.whisper import WhisperAsr, whisper_model_path

    engine = engine or options.engine
    decode = replace(AsrOptions(), threads=options.threads, workers=options.workers,
                     repetition_penalty=options.repetition_penalty, no_repeat_ngram_size=options.no_repeat_ngram_size,
                     max_tokens_base=options.max_tokens_base, tokens_per_sec=options.tokens_per_sec,
                     min_window_secs=options.min_window_secs)
    if engine in ("whisper-base", "openai"):
        return WhisperAsr(decode, str(whisper_base_dir()), options.language, options.beam_size, "whisper-base")
    if engine == "whisper-tiny":
        return WhisperAsr(decode, whisper_model_path(), "en", options.beam_size, "whisper-tiny.en")
    if os.path.isfile(os.path.join(engine, "model.bin")):
        return WhisperAsr(decode, engine, options.language, options.beam_size, os.path.basename(engine.rstrip("/")))
    raise ValueError(f"unknown turn engine {engine!r}: whisper-base, whisper-tiny, openai, reflex, or a CTranslate2 "
                     "Whisper directory (with model.bin)")


def speculate_windows(options: TurnOptions) -> int:
    """:attr:`~voicegate.config.TurnOptions.speculate_after_ms` in 32 ms VAD windows (at least one): also the
    margin a turn's audio keeps after its last voiced window."""
    return max(1, round(options.speculate_after_ms * PIPELINE_SAMPLE_RATE / 1000 / WINDOW_SAMPLES))


def wav_bytes(pcm: np.ndarray, sample_rate: int = PIPELINE_SAMPLE_RATE) -> bytes:
    """``pcm`` (mono s16) as a WAV file in memory."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(np.ascontiguousarray(pcm, dtype=np.int16).tobytes())
    return buf.getvalue()


class OpenAiTranscriber:
    """``audio.transcriptions`` on an OpenAI-compatible endpoint (OpenAI, or a local faster-whisper server).

    Blocking (a turn worker thread calls it); raises on any failure so that the service falls back to the local
    engine.
    """

    name = "openai"

    def __init__(self, options: TurnOptions, client: Any = None) -> None:
        import openai

        self.options = options
        self.name = f"openai:{options.model}"
        self.client = client or openai.OpenAI(api_key=options.api_key or "not-needed", base_url=options.base_url,
                                              max_retries=0, timeout=options.timeout_secs)

    def transcribe(self, pcm: np.ndarray) -> Transcript:
        """Transcribe ``pcm`` (16 kHz s16) remotely."""
        t0 = time.perf_counter()
        kwargs: dict[str, Any] = {"model": self.options.model, "file": ("turn.wav", wav_bytes(pcm), "audio/wav")}
        if self.options.language:
            kwargs["language"] = self.options.language
        result = self.client.audio.transcriptions.create(**kwargs)
        text = result if isinstance(result, str) else str(getattr(result, "text", ""))
        return Transcript(text.strip(), 1.0, True, (time.perf_counter() - t0) * 1000)


@dataclass
class TurnResult:
    """A turn's transcript, or why the primary engine failed (the fallback's transcript is then in ``transcript``)."""

    transcript: Transcript | None
    engine: str
    error: str | None = None
    """What the primary engine raised, when the transcript came from the fallback (or not at all)."""
    wait_ms: float = 0.0
    """Time the job waited for a turn worker."""


class TurnJob:
    """One whole-turn decode; its callbacks run on the worker thread that decoded it."""

    def __init__(self, audio: np.ndarray) -> None:
        self.audio = audio
        self.cancelled = False
        self.started = False
        self.result: TurnResult | None = None
        self.submitted = time.perf_counter()
        self._lock = threading.Lock()
        self._waiters: list[Callable[[TurnResult], None]] = []

    def then(self, callback: Callable[[TurnResult], None]) -> None:
        """Call ``callback`` with the result (at once when it is ready)."""
        with self._lock:
            if self.result is None:
                self._waiters.append(callback)
                return
            result = self.result
        callback(result)

    def settle(self, result: TurnResult) -> None:
        with self._lock:
            self.result = result
            waiters, self._waiters = self._waiters, []
        for callback in waiters:
            callback(result)


class TurnService:
    """The process's turn workers: threads at a lower priority, each decoding one turn at a time.

    Engines are built on the worker threads (lazily, on the first turn), so the threads a CTranslate2 model
    starts inherit their niceness. Engines are tried in order: with ``openai``, a failed request falls back to
    Whisper base; a local model that cannot be loaded falls back to the reflex's own engine.
    """

    def __init__(self, options: TurnOptions, engines: list[Callable[[], UtteranceAsr]] | None = None) -> None:
        self.options = options
        if engines is None:
            engines = [lambda: local_turn_engine(options)]
            if options.engine == "openai":
                engines.insert(0, lambda: OpenAiTranscriber(options))
            engines.append(_reflex_engine)
        self._factories = engines
        self._engines: list[UtteranceAsr | Exception | None] = [None] * len(engines)
        self._build_lock = threading.Lock()
        self._jobs: queue.SimpleQueue[TurnJob | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"voicegate-turn-{i}", daemon=True)
                         for i in range(max(1, options.workers))]
        for thread in self._threads:
            thread.start()

    def submit(self, audio: np.ndarray) -> TurnJob:
        """Queue a decode of ``audio`` (16 kHz s16); cancel the job to skip it if it has not started."""
        job = TurnJob(audio)
        self._jobs.put(job)
        return job

    def warm_up(self) -> TurnJob:
        """Build the engines and decode a second of silence (the first decode of a model is slow)."""
        return self.submit(np.zeros(PIPELINE_SAMPLE_RATE, dtype=np.int16))

    def close(self) -> None:
        """Stop the workers after the jobs already queued."""
        for _ in self._threads:
            self._jobs.put(None)

    def _engine(self, index: int) -> UtteranceAsr:
        with self._build_lock:
            engine = self._engines[index]
            if engine is None:
                try:
                    engine = self._factories[index]()
                except Exception as exc:
                    log.error("turn transcriber: engine %d of %d could not be loaded: %s", index + 1,
                              len(self._factories), exc)
                    engine = exc
                self._engines[index] = engine
        if isinstance(engine, Exception):
            raise engine
        return engine

    def _work(self) -> None:
        if self.options.nice > 0:
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.options.nice)
            except OSError as exc:  # not permitted here: same priority as the reflex
                log.warning("turn worker: could not lower its priority (%s)", exc)
        while (job := self._jobs.get()) is not None:
            if job.cancelled:
                continue
            job.started = True
            wait_ms = (time.perf_counter() - job.submitted) * 1000
            job.settle(self._decode(job.audio, wait_ms))

    def _decode(self, audio: np.ndarray, wait_ms: float) -> TurnResult:
        error: str | None = None
        name = self.options.engine
        for index in range(len(self._factories)):
            try:
                engine = self._engine(index)
                name = engine.name
                return TurnResult(engine.transcribe(audio), engine.name, error, wait_ms)
            except Exception as exc:
                log.warning("turn transcriber %s failed: %s: %s", name, type(exc).__name__, exc)
                error = error or f"{name}: {type(exc).__name__}: {exc}"
        return TurnResult(None, name, error, wait_ms)


def _reflex_engine() -> UtteranceAsr:
    from voicegate.gate.driver import default_asr

    return default_asr()


TurnDelivery = Callable[[str, dict[str, object]], None]
"""``deliver(text, fields)``: the gate's last step for a turn (keyword rule, relevance filter, the agent)."""


class CallTurns:
    """One call's turns: decodes started at the first silence, reused when the turn is confirmed unchanged.

    All methods run on the event loop; results hop back to it from the worker thread.
    """

    eager = True
    """The gate hands the turn over when its silence is confirmed, without waiting for the reflex's final."""

    def __init__(self, service: TurnService, audio: Callable[[int, int], np.ndarray], call_id: str,
                 on_error: Callable[[str, str, str], None] | None = None) -> None:
        self.service = service
        self.speculate_after_windows = speculate_windows(service.options)
        self.audio = audio
        self.call_id = call_id
        self.on_error = on_error
        self._jobs: dict[tuple[int, int], TurnJob] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def speculate(self, start_samples: int, end_samples: int) -> None:
        """The user fell silent at ``end_samples``: start the decode of the turn so far."""
        key = (start_samples, end_samples)
        if key in self._jobs or self._closed:
            return
        self._drop_stale(keep=key)
        self._loop = asyncio.get_running_loop()
        self._jobs[key] = self.service.submit(self.audio(start_samples, end_samples))

    def finish(self, start_samples: int, end_samples: int, deliver: TurnDelivery) -> None:
        """The turn is confirmed: deliver its transcript (now, or when its decode finishes)."""
        if self._closed:
            return
        key = (start_samples, end_samples)
        self._loop = loop = asyncio.get_running_loop()
        job = self._jobs.pop(key, None)
        speculative = job is not None
        if job is None:
            job = self.service.submit(self.audio(start_samples, end_samples))
        self._drop_stale(keep=None)
        confirmed = time.perf_counter()

        def done(result: TurnResult) -> None:
            ready_ms = max(0.0, (time.perf_counter() - confirmed) * 1000)
            try:
                loop.call_soon_threadsafe(self._delivered, result, deliver, speculative, ready_ms,
                                          (end_samples - start_samples) / (PIPELINE_SAMPLE_RATE / 1000))
            except RuntimeError:  # the loop closed meanwhile
                pass

        job.then(done)

    def _delivered(self, result: TurnResult, deliver: TurnDelivery, speculative: bool, ready_ms: float,
                   audio_ms: float) -> None:
        if self._closed:
            return
        if result.error is not None and self.on_error is not None:
            self.on_error("asr", "turn_engine_failed",
                          f"turn transcriber failed ({result.error}); "
                          + (f"{result.engine} transcribed the turn" if result.transcript is not None
                             else "the turn is lost"))
        transcript = result.transcript
        if transcript is None:
            return
        deliver(transcript.spoken, {"engine": result.engine, "audio_ms": round(audio_ms),
                       "decode_ms": round(transcript.compute_ms, 1) if transcript is not None else None,
                       "speculative": speculative, "waited_after_end_ms": round(ready_ms, 1)})

    def _drop_stale(self, keep: tuple[int, int] | None) -> None:
        for key in [k for k in self._jobs if k != keep]:
            self._jobs.pop(key).cancelled = True

    def close(self) -> None:
        """Forget the call's jobs (a decode in flight finishes and is discarded)."""
        self._closed = True
        self._drop_stale(keep=None)
