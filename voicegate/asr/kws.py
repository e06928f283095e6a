"""Stop-phrase spotting with PocketSphinx keyphrase mode (≈0.4 ms per 20 ms chunk)."""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

# Per-phrase detection thresholds, swept on ../shared/data (speech_commands: 8 "stop" clips against 336 other
# words, ESC-10 and Freesound noises). "stop" at 1e-12: 5/8 caught, 7 % false hits (mostly "off"/"up", noises);
# "wait" at 1e-8: 3 false hits in 344. Short words are where PocketSphinx is weakest, so the gate also judges
# every transcript; "no" is left to the transcript entirely (26 % false hits at any threshold that catches it).
DEFAULT_THRESHOLDS = {
    "stop": 1e-12, "wait": 1e-8, "cancel": 1e-15, "hold on": 1e-10, "hang on": 1e-10, "shut up": 1e-10,
    "be quiet": 1e-10,
}
UNRELIABLE = frozenset({"no", "sorry", "hey", "actually", "quiet", "enough", "pause"})


@dataclass(frozen=True)
class KeywordHit:
    """A spotted phrase; ``end_samples`` is the stream position at which it was reported."""

    phrase: str
    end_samples: int


class KeywordSpotter:
    """Streams 16 kHz s16 PCM through PocketSphinx and reports configured phrases as they are heard."""

    def __init__(self, phrases: tuple[str, ...], thresholds: dict[str, float] | None = None) -> None:
        from pocketsphinx import Decoder

        table = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
        known = [p for p in phrases if (p and p not in UNRELIABLE and " " not in p) or p in table]
        known = [p for p in known if p in table]
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
        self._decoder.process_raw(pcm.astype(np.int16, copy=False).tobytes(), False, False)
        self._position += len(pcm)
        hyp = self._decoder.hyp()
        if hyp is None or not hyp.hypstr.strip():
            return []
        self.reset()
        return [KeywordHit(hyp.hypstr.strip().split("  ")[0].strip(), self._position)]

    def reset(self) -> None:
        """Start a fresh utterance (after a hit, or when the bot starts a new turn)."""
        self._decoder.end_utt()
        self._decoder.start_utt()
