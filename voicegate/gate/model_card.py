"""Writes ``models/relevance.md``, the relevance model's card, from the training figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from voicegate.gate.relevance import LABELS

HEADER = """# relevance.ftz — model card

A fastText classifier (quantized) that labels a partial or final transcript heard while the bot speaks:
`interrupt` (the user wants the floor: a command, a correction, a new question or request), `backchannel`
("uh-huh", "yeah", "okay", "I see", "that's great") or `ignore` (fillers, empty or garbage transcripts).
An exact stop phrase ("stop", "hold on", "no") is an interrupt whatever the model says (lexicon vote).

Rebuild it (fixed seed, one thread, reproducible): `voicegate train-relevance` (or `make relevance-model`).

## Data (read in place from `../shared/data/text`, never copied)

| source | licence | used for | mapping |
|---|---|---|---|
| CLINC150 | CC BY 3.0 | train (train+val+oos), held-out (test+oos_test) | every intent and `oos` → interrupt; `yes`, `thank_you` (≤ 4 words) → backchannel; `maybe` dropped |
| HWU64 | CC BY 4.0 | train (folds 2–10), held-out (fold 1) | every intent → interrupt (`general_commandstop`, `negate`, `confirm`, `quirky`, tasks…); `general_affirm`, `general_praise` (≤ 3 words) → backchannel; the wake name "olly" removed |
| project lexicons (`voicegate/gate/relevance.py`, `train_relevance.py`) | Apache-2.0 (ours) | train | stop phrases × templates, interruption openers ("what about", "no I said …"), corrections → interrupt; backchannels with "oh"/"yeah"/"okay" affixes → backchannel; fillers, ASR noise words, Whisper hallucinations → ignore |
| ICSI MRDA (test meetings) | annotations listed as CC BY 4.0 by ICSI/AMI, repository GPL-3.0: **verify before training on it** | external test only (not trained on) | `b` (continuer), `bk`/`ba` (≤ 3 words) → backchannel; questions `qy/qw/qh/qo/qr/qrr`, `no`/`ar`/`nd`/`ng`, floor grabbers `fg` (≥ 3 words), statements `s` (≥ 5 words) → interrupt; filler-only `fh`/`fg`/`%` → ignore |

Augmentation mimics streaming ASR: everything lower-case without punctuation; 2-, 3- and 4-word prefixes of
interrupts (unless made only of backchannel/filler words, so "what about" already reads as interrupt); a repeated
word; a cut-off last word. Spelling variants (`uh-huh`/`uh huh` → `uhhuh`, `mm-hmm`/`mhm` → `mmhmm`, `ok` → `okay`)
are normalised the same way at training and at run time.

Splits are by source split / cross-validation fold / meeting, never by utterance. Small classes are
oversampled to a third of the interrupts.
"""


def _table(result: dict[str, Any]) -> str:
    lines = ["| class | precision | recall | support |", "|---|---|---|---|"]
    for label in LABELS:
        row = result["per_class"][label]
        lines.append(f"| {label} | {row['precision']} | {row['recall']} | {row['support']} |")
    lines += ["", "Confusion (rows = truth, columns = predicted):", "",
              "| | " + " | ".join(LABELS) + " |", "|---" * (len(LABELS) + 1) + "|"]
    for label in LABELS:
        lines.append(f"| {label} | " + " | ".join(str(result["confusion"][label][p]) for p in LABELS) + " |")
    lines.append(f"\nbackchannel → interrupt rate: {result['backchannel_to_interrupt']}")
    return "\n".join(lines)


def write_card(path: Path, figures: dict[str, Any]) -> None:
    """Write the card with the held-out and external figures."""
    body = [HEADER, "## Figures", "",
            f"Training: {dict(figures['train_examples'])} examples in {figures['train_secs']} s; "
            f"model {figures['size_bytes'] / 1e6:.2f} MB; trained on MRDA: {figures['with_mrda']}.",
            f"Parameters: `{figures['params']}`.", "",
            "### Held-out (CLINC150 test, HWU64 fold 1)", "", _table(figures["held_out"]), "",
            "### External: MRDA test meetings (human meeting transcripts, never trained on)", "",
            _table(figures["external_mrda_test"]), ""]
    if "speed" in figures:
        body += ["### Speed", "", figures["speed"], ""]
    path.write_text("\n".join(body))
