"""Compare the decisions of two ``voicegate bench`` reports (``make test-portable``).

Both reports come from the same corpus under two CPU numerics profiles (BLAS kernel, CTranslate2 instruction set,
onnxruntime graph optimisation) on the modelled clock (``voicegate bench --modelled-clock``), so the runs are
deterministic: a scenario decided differently means a decision that hangs on the last bits of a float.

    python -m voicegate.bench.decisions A/report.json B/report.json

exits 1 and lists the scenarios when any decision differs (label, stopped, paused, resumed); media-time shifts of
the same decision are listed as information.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

TIME_KEYS = ("pause_ms", "stop_ms", "resume_ms", "verdict_ms")


def decisions(report: dict[str, Any], policy: str = "voicegate") -> dict[str, dict[str, Any]]:
    """Per scenario id: what the policy decided (label, first reasons, stopped / paused / resumed) and when."""
    out: dict[str, dict[str, Any]] = {}
    for entry in report["scenarios"]:
        o = entry["outcomes"].get(policy)
        if o is None:
            continue
        out[entry["id"]] = {"verdict": o["verdict"], "reasons": o["reasons"], "stopped": o["stop_ms"] is not None,
                            "paused": o["pause_ms"] is not None, "resumed": o["resume_ms"] is not None,
                            **{key: o[key] for key in TIME_KEYS}}
    return out


def compare(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(decisions that differ, same decisions at other media times), one line each."""
    differ, shifted = [], []
    for sid in sorted(set(a) | set(b)):
        x, y = a.get(sid), b.get(sid)
        if x is None or y is None:
            differ.append(f"{sid}: only in {'the first' if y is None else 'the second'} report")
            continue
        keys = ("verdict", "stopped", "paused", "resumed")
        if any(x[k] != y[k] for k in keys):
            differ.append(f"{sid}: " + ", ".join(f"{k} {x[k]} -> {y[k]}" for k in keys if x[k] != y[k])
                          + f" (reasons {x['reasons']} -> {y['reasons']})")
        elif any(x[k] != y[k] for k in TIME_KEYS):
            shifted.append(f"{sid}: " + ", ".join(f"{k} {x[k]} -> {y[k]}" for k in TIME_KEYS if x[k] != y[k]))
    return differ, shifted


def main(argv: list[str] | None = None) -> int:
    """Compare two reports; 0 when every decision is the same, 1 when one differs, 2 on bad arguments."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m voicegate.bench.decisions A/report.json B/report.json", file=sys.stderr)
        return 2
    reports = [json.loads(Path(p).read_text()) for p in args]
    if not all(r.get("modelled_clock") for r in reports):
        print("note: a report was not run with --modelled-clock: load can move decisions too", file=sys.stderr)
    a, b = (decisions(r) for r in reports)
    differ, shifted = compare(a, b)
    for line in shifted:
        print(f"  same decision, other time: {line}")
    for line in differ:
        print(f"DIFFERENT DECISION: {line}")
    print(f"{len(a)} scenarios: {len(differ)} decided differently, {len(shifted)} at other media times")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
