"""Scoring a transcript against what the user asked for: slot values heard, and slot-word errors.

The barista recordings (``../shared/data/speech/barista``) are labelled with the *values* a user asked for (drink,
size, roast, shots, milk, sweetener), not with whole transcripts. A value is *heard* when its words appear, in
order and next to each other, in the transcript once both are normalised the same way:

- lower case, punctuation and hyphens to spaces ("triple-shot" = "triple shot");
- numbers spelled out ("16 oz" = "sixteen ounce", "12-ounce" = "twelve ounce");
- ``oz`` is ``ounce``, and a final plural ``s`` is dropped ("ounces", "shots", "lots");
- articles carry no slot: "a", "an" and "the" are left out ("with a little bit of milk" = "with little bit of
  milk");
- the spoken forms a listener cannot tell apart are one word: "iced" and "ice" (the "d" vanishes before a
  consonant: "ice mocha"), "roasted" and "roast". Nothing else is forgiven: "skin milk" is not "skim milk",
  "dark rose" is not "dark roast".

Where the labels allow a word error rate, it is computed on the slot words: each value is aligned with the span of
the transcript that matches it best (fewest word edits), and the edits are summed over all values
(:func:`slot_word_errors`). A transcript that misses a value entirely costs all of its words.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from voicegate.bench.asr_eval import word_errors

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
         "seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_ALIASES = {"oz": "ounce", "okay": "ok", "iced": "ice", "roasted": "roast"}
_ARTICLES = frozenset({"a", "an", "the"})
_KEEP_S = frozenset({"less", "plus", "this", "is", "was", "us", "yes", "bus", "gas", "as", "has", "his", "its"})


def number_words(n: int) -> list[str]:
    """``n`` (0–999) spelled out as words; larger numbers digit by digit."""
    if n < 20:
        return [_ONES[n]]
    if n < 100:
        return [_TENS[n // 10]] + ([_ONES[n % 10]] if n % 10 else [])
    if n < 1000:
        return [_ONES[n // 100], "hundred"] + (number_words(n % 100) if n % 100 else [])
    return [_ONES[int(d)] for d in str(n)]


def normalize_words(text: str) -> list[str]:
    """The words of ``text`` as the slot scorer compares them (see the module docstring)."""
    out: list[str] = []
    for token in re.findall(r"[a-z]+|\d+", text.lower().replace("’", "'").replace("'", "")):
        if token.isdigit():
            out += number_words(int(token))
            continue
        token = _ALIASES.get(token, token)
        if token in _ARTICLES:
            continue
        if len(token) > 3 and token.endswith("s") and not token.endswith("ss") and token not in _KEEP_S:
            token = token[:-1]
        out.append(token)
    return out


def slot_heard(value: str, transcript: str) -> bool:
    """True when every word of ``value`` appears in ``transcript``, in order and adjacent (after normalising)."""
    want = normalize_words(value)
    have = normalize_words(transcript)
    if not want:
        return True
    return any(have[i:i + len(want)] == want for i in range(len(have) - len(want) + 1))


def slot_word_errors(value: str, transcript: str) -> tuple[int, int]:
    """``(edits, words)``: the fewest word edits between ``value`` and any span of ``transcript``."""
    want = normalize_words(value)
    have = normalize_words(transcript)
    if not want:
        return 0, 0
    best = len(want)
    for i in range(len(have)):
        for j in range(i + 1, min(len(have), i + 2 * len(want)) + 1):
            best = min(best, word_errors(want, have[i:j]))
            if best == 0:
                return 0, len(want)
    return best, len(want)


@dataclass(frozen=True)
class SpokenRequest:
    """One labelled recording: the file and the slot values the speaker asked for."""

    path: Path
    slots: dict[str, str]


def load_barista(folder: Path) -> list[SpokenRequest]:
    """The labelled orders of ``folder`` (``labels.json`` + ``speech/*.wav``), in file-name order."""
    labels = json.loads((folder / "labels.json").read_text())
    out = []
    for name in sorted(labels):
        slots = {k: v.strip() for k, v in labels[name]["slots"].items() if v.strip()}
        out.append(SpokenRequest(folder / "speech" / name, slots))
    return out


@dataclass
class SlotScore:
    """Slot values heard and slot-word errors, accumulated over transcripts."""

    heard: int = 0
    values: int = 0
    word_edits: int = 0
    words: int = 0

    def add(self, slots: dict[str, str], transcript: str) -> list[str]:
        """Score one transcript; returns the values it missed."""
        missed = []
        for value in slots.values():
            ok = slot_heard(value, transcript)
            self.heard += ok
            self.values += 1
            edits, n = slot_word_errors(value, transcript)
            self.word_edits += edits
            self.words += n
            if not ok:
                missed.append(value)
        return missed

    @property
    def rate(self) -> float:
        """Share of slot values heard."""
        return self.heard / self.values if self.values else 0.0

    @property
    def word_error_rate(self) -> float:
        """Word edits over the slot words."""
        return self.word_edits / self.words if self.words else 0.0
