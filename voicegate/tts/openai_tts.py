"""OpenAI TTS (``audio.speech``, raw 24 kHz PCM) and a fallback wrapper that keeps the call audible."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from voicegate.audio.pcm import resample
from voicegate.tts.base import Speech, Tts
from voicegate.tts.espeak import estimate_word_ends

log = logging.getLogger(__name__)
OPENAI_PCM_RATE = 24_000


class OpenAiTts:
    """``client.audio.speech.create(..., response_format="pcm")`` against any OpenAI-compatible endpoint."""

    def __init__(self, client: Any, model: str = "gpt-4o-mini-tts", voice: str = "alloy",
                 sample_rate: int = OPENAI_PCM_RATE) -> None:
        self.client = client
        self.model = model
        self.voice = voice
        self.sample_rate = sample_rate

    async def synthesize(self, text: str) -> Speech:
        """Synthesize ``text`` (the HTTP call is async; nothing blocks the loop)."""
        response = await self.client.audio.speech.create(model=self.model, voice=self.voice, input=text,
                                                         response_format="pcm")
        data = response.content if hasattr(response, "content") else await response.aread()
        pcm = np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2").astype(np.int16)
        pcm = resample(pcm, OPENAI_PCM_RATE, self.sample_rate)
        return Speech(text, pcm, self.sample_rate, estimate_word_ends(text, len(pcm)))


class FallbackTts:
    """Use ``primary``; when it fails, report it and say the sentence with ``fallback`` after a short apology.

    After a failure the fallback is used for ``cooldown_secs`` before the primary is tried again.
    """

    def __init__(self, primary: Tts, fallback: Tts, on_error: Callable[[Exception], None],
                 apology: str = "Sorry, my voice glitched.", cooldown_secs: float = 30.0) -> None:
        self.primary = primary
        self.fallback = fallback
        self.on_error = on_error
        self.apology = apology
        self.cooldown_secs = cooldown_secs
        self.sample_rate = primary.sample_rate
        self._failed_at: float | None = None

    async def synthesize(self, text: str) -> Speech:
        """Primary, or the fallback (with an apology the first time)."""
        if self._failed_at is not None and time.monotonic() - self._failed_at < self.cooldown_secs:
            return await self.fallback.synthesize(text)
        try:
            return await self.primary.synthesize(text)
        except Exception as exc:
            self._failed_at = time.monotonic()
            self.on_error(exc)
            return await self.fallback.synthesize(f"{self.apology} {text}")
