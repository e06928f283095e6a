"""Stop-phrase spotting with PocketSphinx keyphrase mode (≈0.4 ms per 20 ms chunk)."""

from __future__ import annotations

import logging
import os
import tempfile
from collections import deque
from dataclasses import dataclass

import numpy as np

from voicegate.audio.vad import dbfs_window
from voicegate.config import PIPELINE_SAMPLE_RATE

log = logging.getLogger(__name__)

# Per-phrase thresholds, swept on ../shared/data with all phrases in one decoder: 8 Speech Commands "stop" clips
# plus espeak-ng renditions (5 voices × 2 rates) against 412 negatives (the other 29 words, ESC-10, Freesound,
# espeak-ng backchannels). "stop" at 1e-8 catches 7 of the 8 recordings and 11 of 12 espeak-ng renditions, with
# one false hit among the other 241 recorded words ("up") and none among 120 synthesized backchannels (1e-10 fired
# on "uh-huh"); its other false hits are steady noises (helicopter, sea waves) the noise-floor gate never lets by;
# "wait" at 1e-4 catches 50 % with 2 false hits (both noises);
# "cancel" at 1e-15, 50 % and none. "hold on", "hang on", "shut up", "be quiet" were caught 0–20 % of the time
# with up to 31 false hits at any threshold, and "no" false-fires on a quarter of all words: those are left to
# the transcript (Whisper + the relevance model), which costs ≈0.5 s more.
DEFAULT_THRESHOLDS = {"stop": 1e-8, "wait": 1e-4, "cancel": 1e-15}

REST_AFTER_SAMPLES = PIPELINE_SAMPLE_RATE * 4 // 10
"""With a ``quiet_dbfs`` level, the spotter stops decoding once this long (400 ms) has passed without a chunk at that
level: a phrase is reported a few frames after it ends, and its last sounds can be quiet."""
PREROLL_SAMPLES = PIPELINE_SAMPLE_RATE * 3 // 10
"""When a loud chunk comes after a rest, the spotter first decodes the last 300 ms it rested through, so that it
hears the phrase's quiet start and the silence before it, as it would have without resting."""
CATCH_UP_CHUNKS = 3
"""That pre-roll is decoded a little at a time — with each chunk, up to this many chunks' worth of the audio still
owed — so that the chunk a pause may start on is not held up by 300 ms of decoding at once (≈ 7 ms on a
microphone's noise). The spotter is level with the stream again ≈ 100 ms after it wakes, before any phrase it
spots can have ended."""



@dataclass(frozen=True)
class KeywordHit:
    """A spotted phrase; ``end_samples`` is the stream position at which it was reported."""

    phrase: str
    end_samples: int


class KeywordSpotter:
    """Streams 16 kHz s16 PCM through PocketSphinx and reports configured phrases as they are heard.

    ``quiet_dbfs``: rest on quiet input. Decoding a microphone's low noise costs as much as speech (0.53 ms per
    20 ms chunk here; digital zeros 0.16 ms), and a caller who listens sends mostly that; with a level set, a chunk
    is decoded only when it or one in the last :data:`REST_AFTER_SAMPLES` reaches it, and the
    :data:`PREROLL_SAMPLES` before the first loud chunk are decoded first (caught up over the next few chunks).
    ``None`` decodes everything.
    """

    def __init__(self, phrases: tuple[str, ...], thresholds: dict[str, float] | None = None,
                 quiet_dbfs: float | None = None) -> None:
        from pocketsphinx import Decoder

        table = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
        known = [p for p in phrases if p in table]
        self.phrases = tuple(known)
        self._decoder = None
        self._position = 0
        self.quiet_dbfs = quiet_dbfs
        self._since_loud_samples = REST_AFTER_SAMPLES  # resting until something is heard
        self._held: deque[np.ndarray] = deque()
        """The last chunks rested through (the oldest dropped once the rest make :data:`PREROLL_SAMPLES`), already
        counted in the position: joined only when the spotter wakes."""
        self._held_samples = 0
        self._owed = np.zeros(0, dtype=np.int16)
        """Heard since the spotter woke and not decoded yet (:data:`CATCH_UP_CHUNKS`), oldest first."""
        self.decoded_samples = 0
        """Samples decoded so far, pre-roll included (what resting saves shows here)."""
        if not known:
            return
        fd, self._kws_path = tempfile.mkstemp(suffix=".kws", prefix="voicegate-")
        with os.fdopen(fd, "w") as fh:
            for phrase in known:
                fh.write(f"{phrase} /{table.get(phrase, 1e-25):g}/\n")
        self._decoder = Decoder(kws=self._kws_path, loglevel="FATAL")
        os.unlink(self._kws_path)
        self._decoder.start_utt()
        self._position = 0

    def feed(self, pcm: np.ndarray) -> list[KeywordHit]:
        """Process a chunk; returns the phrases completed in it."""
        if self._decoder is None:
            return []
        pcm = pcm.astype(np.int16, copy=False)
        self._position += len(pcm)
        if self.quiet_dbfs is None:
            return self._decode(pcm)
        if dbfs_window(pcm) >= self.quiet_dbfs:
            self._since_loud_samples = 0
        else:
            self._since_loud_samples += len(pcm)
        if self._since_loud_samples >= REST_AFTER_SAMPLES:
            hits = self._decode(self._owed) if len(self._owed) else []  # (owed audio is gone long before this)
            self._owed = self._owed[:0]
            self._hold(pcm)
            return hits
        if self._held:
            preroll = np.concatenate(self._held)[-PREROLL_SAMPLES:]
            self._owed = np.concatenate([preroll, self._owed])
            self._forget_held()
        if not len(self._owed):
            return self._decode(pcm)
        owed = np.concatenate([self._owed, pcm])
        budget = len(pcm) * (1 + CATCH_UP_CHUNKS)
        self._owed = owed[budget:]
        return self._decode(owed[:budget])

    def _decode(self, pcm: np.ndarray) -> list[KeywordHit]:
        assert self._decoder is not None
        self._decoder.process_raw(pcm.tobytes(), False, False)
        self.decoded_samples += len(pcm)
        hyp = self._decoder.hyp()
        if hyp is None or not hyp.hypstr.strip():
            return []
        self.reset()
        return [KeywordHit(hyp.hypstr.strip().split("  ")[0].strip(), self._position)]

    def skip(self, samples: int) -> None:
        """Let ``samples`` of silence pass without decoding them (stream positions stay right)."""
        self._position += samples
        self._forget_held()
        self._owed = self._owed[:0]

    def _hold(self, pcm: np.ndarray) -> None:
        self._held.append(pcm.copy())  # one chunk's copy (the caller may reuse its buffer), not the whole pre-roll
        self._held_samples += len(pcm)
        while self._held_samples - len(self._held[0]) >= PREROLL_SAMPLES:
            self._held_samples -= len(self._held.popleft())

    def _forget_held(self) -> None:
        self._held.clear()
        self._held_samples = 0

    def reset(self) -> None:
        """Start a fresh utterance (after a hit, or when the bot starts a new turn)."""
        if self._decoder is None:
            return
        self._decoder.end_utt()
        self._decoder.start_utt()
