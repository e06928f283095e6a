"""espeak-ng through its command line, run as an asyncio subprocess.

``pyttsx3`` drives the same engine, but its ``save_to_file`` + ``runAndWait`` can return before the file is
written (see the README), and it blocks the thread it runs on; the CLI streams a WAV to stdout in ≈20 ms per
sentence and never touches the event loop.
"""

from __future__ import annotations

import asyncio
import re
import shutil

import numpy as np

from voicegate.audio.pcm import resample
from voicegate.config import PLAYOUT_SAMPLE_RATE
from voicegate.tts.base import Speech

_WORD = re.compile(r"\S+")


class TtsError(RuntimeError):
    """Synthesis failed; the message names the fix."""


def parse_wav(data: bytes) -> tuple[np.ndarray, int]:
    """Parse a PCM16 WAV as espeak-ng writes it to a pipe (its size fields are placeholders)."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise TtsError("espeak-ng did not return a WAV stream")
    pos, rate = 12, 22050
    while pos + 8 <= len(data):
        tag, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        if tag == b"fmt ":
            rate = int.from_bytes(data[pos + 12:pos + 16], "little")
        elif tag == b"data":
            body = data[pos + 8:]
            return np.frombuffer(body[: len(body) // 2 * 2], dtype="<i2").astype(np.int16), rate
        pos += 8 + size
    raise TtsError("WAV stream from espeak-ng has no data chunk")


def estimate_word_ends(text: str, samples: int, lead_samples: int = 0) -> list[tuple[int, int]]:
    """Spread ``samples`` over the words of ``text`` in proportion to their length (plus a pause per word)."""
    words = list(_WORD.finditer(text))
    if not words:
        return []
    weights = np.array([len(m.group()) + 2 for m in words], dtype=np.float64)
    ends = lead_samples + np.cumsum(weights) / weights.sum() * max(0, samples - lead_samples)
    return [(m.end(), int(e)) for m, e in zip(words, ends, strict=True)]


class EspeakTts:
    """espeak-ng voice, resampled to the playout rate."""

    def __init__(self, voice: str = "en-us", words_per_minute: int = 165, pitch: int = 50,
                 sample_rate: int = PLAYOUT_SAMPLE_RATE) -> None:
        self.voice = voice
        self.words_per_minute = words_per_minute
        self.pitch = pitch
        self.sample_rate = sample_rate
        self.binary = shutil.which("espeak-ng")

    async def synthesize(self, text: str) -> Speech:
        """Synthesize ``text``; raises :class:`TtsError` if espeak-ng is missing or fails."""
        if self.binary is None:
            raise TtsError("espeak-ng not found: install it with `apt-get install espeak-ng` (or `make install`)")
        proc = await asyncio.create_subprocess_exec(
            self.binary, "--stdout", "-v", self.voice, "-s", str(self.words_per_minute), "-p", str(self.pitch),
            "--", text,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await proc.communicate()
        except asyncio.CancelledError:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
        if proc.returncode != 0:
            raise TtsError(f"espeak-ng exited {proc.returncode}: {err.decode(errors='replace').strip()}")
        pcm, rate = parse_wav(out)
        pcm = resample(pcm, rate, self.sample_rate)
        voiced = np.flatnonzero(np.abs(pcm) > 300)
        lead = int(voiced[0]) if voiced.size else 0
        return Speech(text, pcm, self.sample_rate, estimate_word_ends(text, len(pcm), lead))
