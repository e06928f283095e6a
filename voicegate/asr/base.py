"""The transcript interface shared by every ASR engine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Transcript:
    """Text for a stretch of audio; ``final`` is False for a streaming partial."""

    text: str
    confidence: float
    final: bool
    compute_ms: float = 0.0


class UtteranceAsr(Protocol):
    """Transcribes a whole segment of 16 kHz s16 audio (blocking: call it from an executor)."""

    name: str

    def transcribe(self, pcm: np.ndarray) -> Transcript:
        """Transcribe ``pcm``."""
        ...


class StreamingAsr(Protocol):
    """Push PCM, get partial and final transcripts (blocking: call it from the call's executor)."""

    name: str

    def accept(self, pcm: np.ndarray) -> Transcript | None:
        """Feed audio; returns a partial or final transcript when one changes."""
        ...

    def finish(self) -> Transcript:
        """Flush and return the final transcript of the current utterance."""
        ...
