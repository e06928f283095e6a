"""PNG plots for the benchmark: latency CDFs per policy and an annotated timeline per label."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from voicegate.bench.scenario import Outcome


def latency_cdfs(rows: dict[str, list[dict[str, Any]]], out: Path) -> Path:
    """CDFs of time-to-silence (interrupts) and verdict latency (all) per policy."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for policy, items in rows.items():
        ttp = sorted(r["silence_ms"] - r["onset_ms"] for r in items
                     if r["label"] == "interrupt" and r["silence_ms"] is not None)
        ver = sorted(r["verdict_ms"] - r["onset_ms"] for r in items if r["verdict_ms"] is not None)
        for ax, values in ((axes[0], ttp), (axes[1], ver)):
            if values:
                ax.step(values, np.arange(1, len(values) + 1) / len(values), where="post", label=policy)
    axes[0].set(title="interrupts: onset → outbound silence", xlabel="ms", ylabel="fraction")
    axes[1].set(title="onset → stop/resume verdict", xlabel="ms")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = out / "latency_cdf.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def timeline(o: Outcome, title: str, path: Path) -> Path:
    """Bot and user waveforms, VAD probability and the pause/verdict/resume/stop marks of one run."""
    fig, axes = plt.subplots(3, 1, figsize=(11, 6), sharex=True)
    t_bot = np.arange(len(o.bot_out)) / 24.0
    t_mic = np.arange(len(o.mic)) / 16.0
    axes[0].plot(t_bot[::8], o.bot_out[::8], lw=0.5, color="#1e7a46")
    axes[0].set_ylabel("bot out")
    axes[1].plot(t_mic[::4], o.mic[::4], lw=0.5, color="#2857c5")
    axes[1].set_ylabel("microphone")
    if o.vad_trace:
        t, p, v = zip(*o.vad_trace, strict=True)
        axes[2].plot(t, p, color="#111827", lw=1, label="Silero p(speech)")
        axes[2].fill_between(t, 0, [float(x) for x in v], color="#8aa4e0", alpha=0.4, step="pre", label="voiced")
    axes[2].set_ylabel("VAD")
    axes[2].set_xlabel("media time (ms)")
    marks = [("onset", o.onset_ms, "#2857c5"), ("pause", o.pause_ms, "#d98e04"), ("verdict", o.verdict_ms, "#111827"),
             ("resume", o.resume_ms, "#1e7a46"), ("stop", o.stop_ms, "#b3261e")]
    for name, at, color in marks:
        if at is None:
            continue
        for ax in axes:
            ax.axvline(at, color=color, ls="--", lw=1)
        axes[0].text(at, axes[0].get_ylim()[1] * 0.8, name, color=color, fontsize=8, rotation=90)
    lo = max(0.0, o.onset_ms - 1000)
    axes[2].set_xlim(lo, lo + 4000)
    axes[2].legend(loc="upper right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
