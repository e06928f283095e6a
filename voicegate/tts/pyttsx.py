"""pyttsx3 (``VOICEGATE_TTS=pyttsx3``): espeak-ng in-process through pyttsx3, sentence by sentence.

pyttsx3's espeak driver initialises libespeak-ng once per process and is not thread-safe, and ``runAndWait`` blocks:
every synthesis runs on one dedicated thread shared by all calls, never on the event loop. Its ``save_to_file`` +
``runAndWait`` can return before the file exists (and ``say`` plays through ``aplay``), so the audio is not read
from the file: the engine's synthesis callback is wrapped and its samples are collected as they are produced, with
espeak's word events and their audio positions — real word timings for the honest history, not estimates. The
file pyttsx3 insists on writing goes to a temporary directory and is removed.

The espeak-ng command line (:class:`~voicegate.tts.espeak.EspeakTts`) stays the default: it is faster to the first
audio (README, "Text to speech") and a crash in it cannot take the server process down.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import functools
import io
import logging
import os
import tempfile
import threading
from typing import Any

import numpy as np

from voicegate.audio.pcm import resample
from voicegate.config import PLAYOUT_SAMPLE_RATE
from voicegate.tts.base import Speech
from voicegate.tts.espeak import TtsError, estimate_word_ends

log = logging.getLogger(__name__)
ESPEAK_RATE = 22_050
"""libespeak-ng's output rate (pyttsx3's driver assumes it too)."""
DONE_TIMEOUT_SECS = 10.0


@functools.cache
def _executor() -> concurrent.futures.ThreadPoolExecutor:
    """The one thread that owns pyttsx3's engine (libespeak-ng is initialised once per process)."""
    return concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="voicegate-pyttsx3")


class _Engine:
    """pyttsx3's espeak engine with its synthesis callback wrapped (created and used on the TTS thread only)."""

    def __init__(self) -> None:
        try:
            import pyttsx3
            from pyttsx3.drivers import _espeak
        except Exception as exc:  # pyttsx3 or libespeak-ng missing
            raise TtsError(f"pyttsx3 with its espeak driver is not available ({exc}): pip install pyttsx3 and "
                           "apt-get install espeak-ng (make install does both)") from exc
        self._espeak: Any = _espeak
        self.engine: Any = pyttsx3.init("espeak")
        driver = self.engine.proxy._driver
        self._driver_callback = driver._onSynth
        self._samples: list[bytes] = []
        self._words: list[tuple[int, int, int]] = []
        """(1-based character position, length, audio position in ms) of each word espeak reports."""
        self._done = threading.Event()
        self.retries = 0
        _espeak.SetSynthCallback(self._on_synth)  # replaces the driver's; the driver's is still called

    def _on_synth(self, wav: Any, numsamples: int, events: Any) -> int:
        i = 0
        while events[i].type != self._espeak.EVENT_LIST_TERMINATED:
            event = events[i]
            if event.type == self._espeak.EVENT_WORD:
                self._words.append((event.text_position, event.length, event.audio_position))
            elif event.type == self._espeak.EVENT_MSG_TERMINATED:
                self._done.set()
            i += 1
        if numsamples > 0:
            self._samples.append(ctypes.string_at(wav, numsamples * ctypes.sizeof(ctypes.c_short)))
        return int(self._driver_callback(wav, numsamples, events))

    def synthesize(self, text: str, rate_wpm: int, voice: str | None) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
        """Blocking: the sentence's 22.05 kHz samples and its word events (a second try when pyttsx3's loop ended
        without any audio: seen once in ~150 sentences)."""
        pcm, words = self._once(text, rate_wpm, voice)
        if not len(pcm):
            self.retries += 1
            log.warning("pyttsx3 returned no audio for %r; trying once more", text)
            pcm, words = self._once(text, rate_wpm, voice)
        return pcm, words

    def _once(self, text: str, rate_wpm: int, voice: str | None) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
        self._samples, self._words = [], []
        self._done.clear()
        self.engine.setProperty("rate", rate_wpm)
        if voice:
            self.engine.setProperty("voice", voice)
        with tempfile.TemporaryDirectory(prefix="voicegate-pyttsx3-") as folder:
            self.engine.save_to_file(text, os.path.join(folder, "sentence.wav"))
            with contextlib.redirect_stdout(io.StringIO()):  # the driver prints "Audio saved to …"
                self.engine.runAndWait()
            if not self._done.wait(DONE_TIMEOUT_SECS):
                raise TtsError(f"pyttsx3 did not finish synthesizing within {DONE_TIMEOUT_SECS:g} s")
        pcm = np.frombuffer(b"".join(self._samples), dtype="<i2").astype(np.int16)
        return pcm, list(self._words)


@functools.cache
def _engine() -> _Engine:
    return _Engine()


def word_ends_from_events(text: str, words: list[tuple[int, int, int]], samples: int,
                          rate: int) -> list[tuple[int, int]]:
    """``Speech.word_ends`` from espeak's word events: a word ends where the next one starts (the last one where
    the audio ends); character positions are 1-based."""
    starts = [(max(0, pos - 1) + length, int(ms * rate / 1000)) for pos, length, ms in words if length > 0]
    ends: list[tuple[int, int]] = []
    for i, (char_end, _) in enumerate(starts):
        sample_end = starts[i + 1][1] if i + 1 < len(starts) else samples
        ends.append((min(char_end, len(text)), min(sample_end, samples)))
    return ends


class PyttsxTts:
    """espeak-ng through pyttsx3, on its own thread; same voice as :class:`~voicegate.tts.espeak.EspeakTts`."""

    def __init__(self, words_per_minute: int = 165, voice: str | None = "gmw/en-us",
                 sample_rate: int = PLAYOUT_SAMPLE_RATE) -> None:
        self.words_per_minute = words_per_minute
        self.voice = voice
        self.sample_rate = sample_rate

    async def synthesize(self, text: str) -> Speech:
        """Synthesize ``text`` on the pyttsx3 thread; raises :class:`TtsError` when pyttsx3 cannot."""
        loop = asyncio.get_running_loop()
        pcm, words = await loop.run_in_executor(_executor(), self._blocking, text)
        if not len(pcm):
            raise TtsError(f"pyttsx3 returned no audio for {text!r}")
        pcm = resample(pcm, ESPEAK_RATE, self.sample_rate)
        ends = word_ends_from_events(text, words, len(pcm), self.sample_rate) if words else \
            estimate_word_ends(text, len(pcm))
        return Speech(text, pcm, self.sample_rate, ends)

    def _blocking(self, text: str) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
        return _engine().synthesize(text, self.words_per_minute, self.voice)
