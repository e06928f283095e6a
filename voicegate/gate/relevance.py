"""The relevance judge: is a (partial) transcript heard while the bot speaks an interruption, a backchannel, or
nothing? A fastText model decides; a lexicon of stop phrases votes beside it and stands in when no model loads.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from voicegate.config import MODELS_DIR

log = logging.getLogger(__name__)

Label = Literal["interrupt", "backchannel", "ignore"]
LABELS: tuple[Label, ...] = ("interrupt", "backchannel", "ignore")
DEFAULT_MODEL = MODELS_DIR / "relevance.ftz"

STOP_PHRASES = (
    "stop", "stop it", "stop talking", "please stop", "wait", "wait wait", "wait a second", "wait a minute",
    "hold on", "hang on", "no", "no no", "cancel", "cancel that", "shut up", "be quiet", "quiet", "pause",
    "enough", "never mind", "excuse me", "sorry", "one second", "one moment", "just a second", "hey",
    "stop stop", "okay stop", "ok stop", "actually", "hold up", "not now", "that's enough", "no stop",
)
BACKCHANNELS = (
    "yeah", "yes", "yep", "yup", "uhhuh", "mmhmm", "mhm", "hmm", "okay", "right", "sure", "i see", "got it",
    "oh", "oh okay", "oh i see", "oh yeah", "oh right", "oh wow", "wow", "cool", "nice", "great", "good",
    "that's great", "that's nice", "that's cool", "that's right", "that's true", "true", "exactly", "indeed",
    "of course", "all right", "alright", "makes sense", "that makes sense", "interesting", "really", "totally",
    "definitely", "absolutely", "fair enough", "okay okay", "yeah yeah", "right right", "uhhuh uhhuh",
    "yeah okay", "okay yeah", "okay got it", "okay cool", "yeah right", "yeah sure", "sure sure", "gotcha",
    "i know", "aha", "ah", "ah okay", "oh nice", "sounds good", "perfect", "lovely", "wonderful", "uhuh",
    "yes yes", "mmhmm yeah", "yeah i see", "right okay", "okay great", "oh cool", "thanks", "thank you",
)
FILLERS = (
    "", "um", "uh", "er", "erm", "ah", "eh", "mm", "uhm", "hm", "um um", "uh uh", "the", "a", "an", "and",
    "so", "i", "it", "of", "to", "in", "is", "you", "huh", "hum", "mmm", "ugh", "the the", "and the", "a the",
    "uh the", "um so", "so um", "and um", "but um", "like", "well", "ha", "haha", "ha ha", "heh", "ooh",
    "[noise]", "[music]", "[laughter]", "<unk>", "(coughs)", "*sneezes*", "[blank_audio]", "(upbeat music)",
    "thanks for watching", "subtitles by the amara org community", "bye", "oh oh", "s", "t", "th", "wh",
)

_PUNCT = re.compile(r"[^\w\s']+")
_SPACES = re.compile(r"\s+")
_CANON = (
    (re.compile(r"\b(?:uh[\s-]?huh|uh-uh-huh|un-?huh)\b"), "uhhuh"),
    (re.compile(r"\b(?:mm[\s-]?hmm+|m[\s-]?hm+|mhmm|mmhm+|hmm[\s-]?mm)\b"), "mmhmm"),
    (re.compile(r"\bo\.?k\.?\b|\bokey\b|\bokie\b"), "okay"),
    (re.compile(r"\bum+\b"), "um"),
    (re.compile(r"\buh+\b"), "uh"),
)


def normalize(text: str) -> str:
    """Lower-case, canonical spelling of ``uh-huh``/``mm-hmm``/``ok``, punctuation and brackets stripped.

    This is what every source (training text, Vosk, Whisper, PocketSphinx) goes through before the model.
    """
    out = text.lower().replace("’", "'").strip()
    for pattern, repl in _CANON:
        out = pattern.sub(repl, out)
    keep_brackets = out if re.fullmatch(r"[\[(<*][^\])>*]*[\])>*]", out) else None
    out = _PUNCT.sub(" ", out)
    out = _SPACES.sub(" ", out).strip(" '")
    if keep_brackets is not None:
        return "<nonspeech>"
    for pattern, repl in _CANON[:2]:
        out = pattern.sub(repl, out)
    return out


_FUNCTION_WORDS = frozenset(
    "the a an and or but so of to in on at by for from with about as is are was were be been it its this that these "
    "those there their they them you your we our i me my he she his her can could would will shall should do does "
    "did have has had not no yes what when where which who how why just than then very".split())


def content_words(text: str) -> list[str]:
    """The words of ``text`` (normalised) that carry content: no function words, at least three letters."""
    return [w for w in normalize(text).split() if w not in _FUNCTION_WORDS and len(w) > 2]


@dataclass(frozen=True)
class Relevance:
    """One judgement."""

    label: Label
    confidence: float
    source: str
    """``model``, ``lexicon`` or ``empty``."""


class RelevanceJudge(Protocol):
    """Anything that labels a transcript; the gate depends only on this."""

    def classify(self, text: str) -> Relevance:
        """Label ``text`` (raw ASR output is fine: it is normalised first)."""
        ...


class LexiconJudge:
    """Exact phrase lists: stop phrases → interrupt, backchannels → backchannel, fillers → ignore.

    Anything else of three words or more is an interrupt (a user who says that much wants the floor).
    """

    def __init__(self, stop_phrases: tuple[str, ...] = STOP_PHRASES) -> None:
        self.stop = {normalize(p) for p in stop_phrases}
        self.backchannel = {normalize(p) for p in BACKCHANNELS}
        self.ignore = {normalize(p) for p in FILLERS}

    def classify(self, text: str) -> Relevance:
        """Label ``text`` from the phrase lists."""
        norm = normalize(text)
        if not norm or norm == "<nonspeech>" or norm in self.ignore:
            return Relevance("ignore", 1.0, "empty" if not norm else "lexicon")
        if norm in self.stop or any(norm.startswith(p + " ") for p in self.stop if " " in p):
            return Relevance("interrupt", 1.0, "lexicon")
        if norm in self.backchannel:
            return Relevance("backchannel", 1.0, "lexicon")
        words = norm.split()
        if len(words) >= 3:
            return Relevance("interrupt", 0.6, "lexicon")
        return Relevance("ignore", 0.4, "lexicon")


class FastTextJudge:
    """The fastText relevance model, with the stop-phrase lexicon voting beside it.

    An exact stop phrase ("stop", "hold on", "no") is an interrupt whatever the model says, and empty or
    non-speech text is ``ignore``; everything else is the model's call.
    """

    def __init__(self, model_path: Path = DEFAULT_MODEL, stop_phrases: tuple[str, ...] = STOP_PHRASES) -> None:
        import fasttext

        if not model_path.exists():
            raise FileNotFoundError(
                f"relevance model {model_path} is missing: rebuild it with `voicegate train-relevance`")
        t0 = time.perf_counter()
        fasttext.FastText.eprint = lambda *args, **kwargs: None
        self.model = fasttext.load_model(str(model_path))
        self.load_ms = (time.perf_counter() - t0) * 1000
        self.stop = {normalize(p) for p in stop_phrases}

    def classify(self, text: str) -> Relevance:
        """Label ``text`` (≈ a few µs)."""
        norm = normalize(text)
        if not norm or norm == "<nonspeech>":
            return Relevance("ignore", 1.0, "empty")
        if norm in self.stop:
            return Relevance("interrupt", 1.0, "lexicon")
        labels, probs = self.model.predict(norm, k=1)
        label = labels[0].removeprefix("__label__")
        return Relevance(label, float(min(1.0, probs[0])), "model")


def load_judge(model_path: Path = DEFAULT_MODEL) -> RelevanceJudge:
    """The fastText judge, or the lexicon with a log line naming the fix when the model cannot load."""
    try:
        return FastTextJudge(model_path)
    except Exception as exc:
        log.warning("relevance model unavailable (%s); using the phrase lexicon instead", exc)
        return LexiconJudge()
