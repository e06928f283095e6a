"""Barge-in metrics per policy and per label (names are the report's contract)."""

from __future__ import annotations

from typing import Any

import numpy as np

MISS_WINDOW_MS = 1500.0


def percentiles(values: list[float]) -> dict[str, float | None]:
    """``{"p50", "p95"}`` in the values' unit (None when empty)."""
    if not values:
        return {"p50": None, "p95": None}
    return {"p50": round(float(np.percentile(values, 50)), 1), "p95": round(float(np.percentile(values, 95)), 1)}


def penalty_s(row: dict[str, Any]) -> float:
    """SID-Bench's penalty for one scenario: hit = stop latency, false stop = rest of the bot's planned turn,
    miss = the bot speech the user had to sit through after asking it to stop, correct ignore = 0."""
    stopped = row["stop_ms"] is not None
    if row["label"] == "interrupt":
        if stopped and row["stop_ms"] - row["onset_ms"] <= MISS_WINDOW_MS:
            return max(0.0, row["stop_ms"] - row["onset_ms"]) / 1000
        return float(row["bot_after_onset_s"])
    return float(row["remaining_at_stop_s"]) if stopped else 0.0


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The metrics for one policy over ``rows`` (one row per scenario)."""
    interrupts = [r for r in rows if r["label"] == "interrupt"]
    others = [r for r in rows if r["label"] != "interrupt"]
    hits = [r for r in interrupts if r["stop_ms"] is not None and r["stop_ms"] - r["onset_ms"] <= MISS_WINDOW_MS]
    gaps = []
    for r in others:
        if r["stop_ms"] is not None:
            continue
        if r["pause_ms"] is None:
            gaps.append(0.0)
        elif r["resume_ms"] is not None:
            gaps.append(r["resume_ms"] - r["pause_ms"])
    return {
        "scenarios": len(rows),
        "time_to_pause_ms": percentiles([max(0.0, r["silence_ms"] - r["onset_ms"]) for r in interrupts
                                         if r["silence_ms"] is not None]),
        "verdict_latency_ms": percentiles([max(0.0, r["verdict_ms"] - r["onset_ms"]) for r in rows
                                           if r["verdict_ms"] is not None]),
        "false_stop_rate": round(sum(r["stop_ms"] is not None for r in others) / len(others), 4) if others else None,
        "missed_stop_rate": round(1 - len(hits) / len(interrupts), 4) if interrupts else None,
        "resume_gap_ms": percentiles(gaps),
        "resume_after_sound_end_ms": percentiles([r["resume_ms"] - r["sound_end_ms"] for r in others
                                                  if r["resume_ms"] is not None and r["sound_end_ms"] > 0]),
        "stop_phrase_verdict_after_end_ms": percentiles(
            [r["stop_ms"] - r["sound_end_ms"] for r in hits if r.get("stop_phrase")]),
        "apt_s": round(float(np.mean([penalty_s(r) for r in rows])), 3) if rows else None,
    }


def by_label(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """:func:`summarize` per label."""
    labels = sorted({r["label"] for r in rows})
    return {label: summarize([r for r in rows if r["label"] == label]) for label in labels}


def by_group(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """:func:`summarize` per manifest ``group`` (scenarios without one are left out)."""
    groups = sorted({r["group"] for r in rows if r.get("group")})
    return {group: summarize([r for r in rows if r.get("group") == group]) for group in groups}
