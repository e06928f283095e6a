"""The transcript interface shared by every ASR engine, and what a transcript says about the sound."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

import numpy as np

_SOUND_TAG = re.compile(r"\([^)]*\)?|\[[^\]]*\]?|\*[^*]*\*?|♪[^♪]*♪?")
"""Whisper's annotations of non-speech sound: ``(cough)``, ``[laughter]``, ``*sigh*``, ``♪``; an unclosed one
runs to the end of the text."""
_VOWEL_GROUPS = re.compile(r"[aeiouy]+")


@dataclass(frozen=True)
class Transcript:
    """Text for a stretch of audio; ``final`` is False for a streaming partial."""

    text: str
    confidence: float
    final: bool
    compute_ms: float = 0.0
    no_speech_prob: float = 0.0
    """The engine's probability that the audio holds no speech at all (0 when it does not say)."""

    @property
    def spoken(self) -> str:
        """The words, without the engine's annotations of non-speech sound."""
        return spoken_text(self.text)

    @property
    def sound_tags(self) -> list[str]:
        """The engine's annotations of non-speech sound (``(coughing)``, ``[laughter]``, …)."""
        return _SOUND_TAG.findall(self.text)

    @property
    def nonspeech(self) -> bool:
        """The engine heard a non-speech sound and no real word: nothing here is language."""
        if not self.sound_tags:
            return False
        return not any(len(w) >= 2 for w in re.findall(r"[a-z']+", self.spoken.lower()))


def spoken_text(text: str) -> str:
    """``text`` without sound annotations, whitespace collapsed."""
    return " ".join(_SOUND_TAG.sub(" ", text).split())


def syllables(text: str) -> int:
    """A rough syllable count (vowel groups per word, at least one per word; digits count one per digit)."""
    count = 0
    for word in re.findall(r"[a-z']+|\d", text.lower()):
        count += max(1, len(_VOWEL_GROUPS.findall(word))) if not word.isdigit() else 1
    return count


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
