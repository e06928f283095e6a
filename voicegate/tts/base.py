"""The TTS interface."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Speech:
    """Synthesized audio for one sentence or clause.

    ``word_ends`` maps playout position back to text: entry *i* is ``(char_end, sample_end)`` of word *i*, so
    the text heard after ``n`` samples is ``text[:char_end]`` of the last word with ``sample_end <= n``.
    """

    text: str
    pcm: np.ndarray
    sample_rate: int
    word_ends: list[tuple[int, int]] = field(default_factory=list)

    @property
    def duration_ms(self) -> float:
        """Length of the audio in ms."""
        return 1000.0 * len(self.pcm) / self.sample_rate

    def text_heard(self, played_samples: int) -> str:
        """The words fully played after ``played_samples`` samples."""
        if played_samples >= len(self.pcm):
            return self.text
        end = 0
        for char_end, sample_end in self.word_ends:
            if sample_end <= played_samples:
                end = char_end
        return self.text[:end].rstrip()


class Tts(Protocol):
    """Anything that turns text into :class:`Speech` without blocking the event loop."""

    sample_rate: int

    async def synthesize(self, text: str) -> Speech:
        """Synthesize ``text`` at :attr:`sample_rate`."""
        ...
