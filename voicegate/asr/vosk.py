"""Vosk streaming ASR: used when a model directory is configured or found under ``models/``."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from voicegate.asr.base import Transcript
from voicegate.config import MODELS_DIR, PIPELINE_SAMPLE_RATE

log = logging.getLogger(__name__)
_warned = False


def find_vosk_model(configured: Path | None = None) -> Path | None:
    """``VOICEGATE_VOSK_MODEL`` if set, else the first ``models/vosk-model-*`` directory; None (logged once,
    naming the fix) when there is none."""
    global _warned
    candidates = [configured] if configured else sorted(MODELS_DIR.glob("vosk-model-*"))
    for path in candidates:
        if path is not None and ((path / "am").is_dir() or (path / "conf").is_dir()):
            return path
    if not _warned:
        _warned = True
        where = configured or f"{MODELS_DIR}/vosk-model-*"
        log.warning("no Vosk model at %s: using Whisper tiny.en for transcripts "
                    "(run `make models` where the Vosk model server is reachable, or set VOICEGATE_VOSK_MODEL)",
                    where)
    return None


class VoskAsr:
    """Streaming recognizer over one Vosk model (partials as the user speaks, finals at pauses)."""

    name = "vosk"

    def __init__(self, model_dir: Path) -> None:
        import vosk

        vosk.SetLogLevel(-1)
        self._model = vosk.Model(str(model_dir))
        self._rec = vosk.KaldiRecognizer(self._model, PIPELINE_SAMPLE_RATE)
        self._rec.SetWords(True)
        self._last_partial = ""

    def accept(self, pcm: np.ndarray) -> Transcript | None:
        """Feed audio; returns a changed partial, or a final at Vosk's own endpoint."""
        t0 = time.perf_counter()
        if self._rec.AcceptWaveform(pcm.astype(np.int16, copy=False).tobytes()):
            return self._final(json.loads(self._rec.Result()), t0)
        partial = json.loads(self._rec.PartialResult()).get("partial", "")
        if partial and partial != self._last_partial:
            self._last_partial = partial
            return Transcript(partial, 0.5, False, (time.perf_counter() - t0) * 1000)
        return None

    def finish(self) -> Transcript:
        """Flush the current utterance."""
        return self._final(json.loads(self._rec.FinalResult()), time.perf_counter())

    def transcribe(self, pcm: np.ndarray) -> Transcript:
        """Whole-segment use, like Whisper."""
        self.accept(pcm)
        return self.finish()

    def _final(self, result: dict[str, object], t0: float) -> Transcript:
        self._last_partial = ""
        words: list[dict[str, float]] = result.get("result") or []  # type: ignore[assignment]
        conf = float(np.mean([w["conf"] for w in words])) if words else 0.0
        return Transcript(str(result.get("text", "")), conf, True, (time.perf_counter() - t0) * 1000)
