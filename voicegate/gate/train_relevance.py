"""Reproducible training of the fastText relevance model from ``../shared/data/text``.

Shipped model: trained on CLINC150 (CC BY 3.0), HWU64 (CC BY 4.0) and the project's own lexicons and templates.
ICSI MRDA is used only as an external held-out test (its licence must be verified before training on it; pass
``--with-mrda`` to train on its train split for a local, unshipped model).
"""

from __future__ import annotations

import csv
import json
import random
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from voicegate.config import MODELS_DIR, REPO_ROOT
from voicegate.gate.relevance import BACKCHANNELS, FILLERS, LABELS, STOP_PHRASES, normalize

SEED = 13
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "text"

# Source tag → label. Anything not listed is dropped.
CLINC_BACKCHANNEL = {"yes", "thank_you"}
CLINC_DROP = {"maybe"}
HWU_BACKCHANNEL = {"general_affirm", "general_praise"}
MRDA_BACKCHANNEL_GENERAL = {"b"}
MRDA_BACKCHANNEL_FULL = {"bk", "ba"}
MRDA_INTERRUPT_GENERAL = {"qy", "qw", "qh", "qo", "qr", "qrr"}
MRDA_INTERRUPT_FULL = {"no", "ar", "nd", "ng"}

STOP_TEMPLATES = (
    "{p}", "{p} please", "please {p}", "{p} {p}", "okay {p}", "no {p}", "{p} a second", "oh {p}", "{p} there",
    "hey {p}", "sorry {p}", "{p} i have a question", "{p} that's not right", "{p} what did you say",
)
INTERRUPT_OPENERS = (
    "what about", "can you", "could you", "how do i", "what is", "what's", "why", "where is", "actually i",
    "no i said", "no i meant", "i said", "i meant", "i want", "i need", "tell me", "let me", "but what",
    "wait what", "hold on what", "is it", "do you", "i don't", "that's not", "that's wrong", "not what i",
    "excuse me", "sorry but", "can i", "go back", "skip", "next", "repeat that", "say that again", "louder",
    "slower", "speak up", "i have a question", "quick question", "one question", "what time", "how much",
)
CORRECTIONS = (
    "no i said {x}", "no {x}", "not {x}", "i said {x} not {y}", "no no {x}", "actually {x}", "i meant {x}",
    "no it's {x}", "that's not {y} it's {x}", "wrong it was {x}",
)
SLOTS = ("tuesday", "friday", "seven", "the blue one", "london", "two people", "tomorrow", "my account", "noon")


@dataclass
class Dataset:
    """Labelled (label, text) pairs per split, with counts per source."""

    train: list[tuple[str, str]] = field(default_factory=list)
    test: list[tuple[str, str]] = field(default_factory=list)
    external: list[tuple[str, str]] = field(default_factory=list)
    sources: Counter[str] = field(default_factory=Counter)


_CHATTER = {normalize(p) for p in BACKCHANNELS + FILLERS}


def _words(text: str) -> list[str]:
    return normalize(text).split()


def _streaming_variants(text: str, rng: random.Random) -> Iterable[str]:
    """What streaming ASR emits of an interrupt: prefixes, a repeated word, a cut-off last word."""
    words = text.split()
    k = rng.choice((2, 2, 3, 4))
    prefix = " ".join(words[:k])
    if len(words) > k and prefix not in _CHATTER and not all(w in _CHATTER for w in words[:k]):
        yield prefix
    if len(words) >= 3 and rng.random() < 0.3:
        i = rng.randrange(len(words))
        yield " ".join([*words[: i + 1], words[i], *words[i + 1:]])
    if len(words) >= 3 and len(words[-1]) > 3 and rng.random() < 0.3:
        yield " ".join([*words[:-1], words[-1][: rng.randint(1, 3)]])


def _add(pairs: list[tuple[str, str]], label: str, text: str) -> None:
    norm = normalize(text)
    if label == "ignore" or norm:
        pairs.append((label, norm))


def _add_intent(ds: Dataset, target: list[tuple[str, str]], source: str, text: str, backchannel: bool,
                max_backchannel_words: int, rng: random.Random) -> None:
    """An intent utterance: a short affirmation is a backchannel, anything else an interrupt (+ ASR variants)."""
    if backchannel:
        if len(_words(text)) <= max_backchannel_words:
            _add(target, "backchannel", text)
            ds.sources[f"{source}:backchannel"] += 1
        return
    _add(target, "interrupt", text)
    ds.sources[f"{source}:interrupt"] += 1
    if target is ds.train:
        for variant in _streaming_variants(normalize(text), rng):
            _add(target, "interrupt", variant)


def _clinc(root: Path, ds: Dataset, rng: random.Random) -> None:
    data = json.loads((root / "clinc150" / "data" / "data_full.json").read_text())
    for split_key, target in (("train", ds.train), ("oos_train", ds.train), ("val", ds.train),
                              ("test", ds.test), ("oos_test", ds.test)):
        for text, intent in data[split_key]:
            if intent not in CLINC_DROP:
                _add_intent(ds, target, "clinc150", text, intent in CLINC_BACKCHANNEL, 4, rng)


def _hwu(root: Path, ds: Dataset, rng: random.Random) -> None:
    with (root / "hwu64" / "hwu64_utterances.tsv").open() as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            target = ds.test if row["cv_test_fold"] == "KFold_1" else ds.train
            text = row["text"].replace("olly", "").strip(" ,.")
            _add_intent(ds, target, "hwu64", text, row["intent"] in HWU_BACKCHANNEL, 3, rng)


def mrda_label(general: str, full: str, text: str) -> str | None:
    """Map one MRDA dialogue act to a label (None: not used)."""
    words = _words(text)
    if not words:
        return None
    fillers = {normalize(f) for f in FILLERS}
    if general in ("fh", "fg", "%") and all(w in fillers for w in words):
        return "ignore"
    if general in MRDA_BACKCHANNEL_GENERAL or (full in MRDA_BACKCHANNEL_FULL and len(words) <= 3):
        return "backchannel"
    if (general in MRDA_INTERRUPT_GENERAL or full in MRDA_INTERRUPT_FULL) and (len(words) >= 2 or words == ["no"]):
        # One-word questions ("right?", "huh?", "really?") are questioning backchannels, not floor grabs.
        return "interrupt"
    if general in ("fg",) and len(words) >= 3:
        return "interrupt"
    if general == "s" and len(words) >= 5 and full not in ("bk", "aa", "ba", "bu"):
        return "interrupt"
    return None


def _mrda(root: Path, ds: Dataset, train_on_it: bool) -> None:
    with (root / "mrda" / "mrda_all.tsv").open() as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            label = mrda_label(row["general_da"], row["full_da"], row["text"])
            if label is None:
                continue
            if row["split"] == "test":
                _add(ds.external, label, row["text"])
                ds.sources[f"mrda-test:{label}"] += 1
            elif train_on_it and row["split"] == "train":
                _add(ds.train, label, row["text"])
                ds.sources[f"mrda-train:{label}"] += 1


def _lexicons(ds: Dataset, rng: random.Random) -> None:
    for phrase in STOP_PHRASES:
        for template in STOP_TEMPLATES:
            _add(ds.train, "interrupt", template.format(p=phrase))
    for opener in INTERRUPT_OPENERS:
        _add(ds.train, "interrupt", opener)
    for template in CORRECTIONS:
        for x in SLOTS:
            _add(ds.train, "interrupt", template.format(x=x, y=rng.choice(SLOTS)))
    prefixes = ("", "", "oh ", "yeah ", "okay ", "uh ", "um ")
    suffixes = ("", "", " okay", " yeah", " right", " i see", " uhhuh")
    for phrase in BACKCHANNELS:
        for _ in range(12):
            text = rng.choice(prefixes) + phrase + rng.choice(suffixes)
            _add(ds.train, "backchannel", text)
    for phrase in FILLERS:
        for _ in range(8):
            _add(ds.train, "ignore", phrase if rng.random() < 0.6 else f"{phrase} {rng.choice(FILLERS)}")
    ds.sources["lexicons"] = len(STOP_PHRASES) + len(BACKCHANNELS) + len(FILLERS) + len(INTERRUPT_OPENERS)


def build_dataset(data_dir: Path = DEFAULT_DATA, with_mrda: bool = False) -> Dataset:
    """Read every source in place and return train / held-out test / external MRDA-test pairs."""
    rng = random.Random(SEED)
    ds = Dataset()
    _clinc(data_dir, ds, rng)
    _hwu(data_dir, ds, rng)
    _lexicons(ds, rng)
    _mrda(data_dir, ds, with_mrda)
    ds.train = sorted(set(ds.train))
    # Balance: repeat the smaller classes so each has at least a third of the interrupts.
    counts = Counter(label for label, _ in ds.train)
    target = counts["interrupt"] // 3
    for label in ("backchannel", "ignore"):
        pool = [p for p in ds.train if p[0] == label]
        while pool and counts[label] < target:
            ds.train.append(rng.choice(pool))
            counts[label] += 1
    rng.shuffle(ds.train)
    return ds


def evaluate(model: object, pairs: list[tuple[str, str]]) -> dict[str, object]:
    """Per-class precision/recall, the confusion matrix and the backchannel→interrupt rate."""
    from voicegate.gate.relevance import FastTextJudge

    judge = FastTextJudge.__new__(FastTextJudge)
    judge.model = model
    judge.stop = {normalize(p) for p in STOP_PHRASES}
    confusion: dict[str, dict[str, int]] = {t: dict.fromkeys(LABELS, 0) for t in LABELS}
    for label, text in pairs:
        confusion[label][judge.classify(text).label] += 1
    per_class = {}
    for label in LABELS:
        tp = confusion[label][label]
        predicted = sum(confusion[t][label] for t in LABELS)
        actual = sum(confusion[label].values())
        per_class[label] = {"precision": round(tp / predicted, 4) if predicted else None,
                            "recall": round(tp / actual, 4) if actual else None, "support": actual}
    bc = sum(confusion["backchannel"].values())
    return {"per_class": per_class, "confusion": confusion,
            "backchannel_to_interrupt": round(confusion["backchannel"]["interrupt"] / bc, 4) if bc else None}


def measure_speed(model_path: Path, repeats: int = 20_000) -> str:
    """Load time and per-transcript prediction time of a saved model, as a Markdown sentence."""
    from voicegate.gate.relevance import FastTextJudge

    loads = []
    for _ in range(5):
        judge = FastTextJudge(model_path)
        loads.append(judge.load_ms)
    texts = ["uh-huh", "what about tomorrow", "stop", "yeah i see what you mean", "um"]
    t0 = time.perf_counter()
    for i in range(repeats):
        judge.classify(texts[i % len(texts)])
    per_ms = (time.perf_counter() - t0) / repeats * 1000
    return (f"Load {min(loads):.1f} ms (best of 5); classify (normalise + predict) {per_ms * 1000:.1f} µs per "
            f"transcript over {repeats} calls, one thread.")


def train(out: Path = MODELS_DIR / "relevance.ftz", data_dir: Path = DEFAULT_DATA, with_mrda: bool = False,
          card: Path | None = MODELS_DIR / "relevance.md") -> dict[str, object]:
    """Build the data, train, quantize, evaluate and write the model and its card. Returns the figures."""
    import fasttext

    t0 = time.perf_counter()
    ds = build_dataset(data_dir, with_mrda)
    params = {"lr": 0.5, "epoch": 15, "wordNgrams": 2, "dim": 32, "minn": 2, "maxn": 4, "bucket": 200_000,
              "loss": "softmax", "thread": 1, "seed": SEED}
    with tempfile.TemporaryDirectory() as tmp:
        train_file = Path(tmp) / "train.txt"
        train_file.write_text("".join(f"__label__{label} {text}\n" for label, text in ds.train))
        fasttext.FastText.eprint = lambda *args, **kwargs: None
        model = fasttext.train_supervised(input=str(train_file), verbose=0, **params)
        model.quantize(input=str(train_file), qnorm=True, retrain=False, cutoff=50_000, thread=1, verbose=0)
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save_model(str(out))
    figures: dict[str, object] = {
        "train_secs": round(time.perf_counter() - t0, 1),
        "train_examples": Counter(label for label, _ in ds.train),
        "sources": dict(ds.sources),
        "params": params,
        "held_out": evaluate(model, ds.test),
        "external_mrda_test": evaluate(model, ds.external),
        "size_bytes": out.stat().st_size,
        "with_mrda": with_mrda,
    }
    figures["speed"] = measure_speed(out)
    if card is not None:
        from voicegate.gate.model_card import write_card

        write_card(card, figures)
    return figures
