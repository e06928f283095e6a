"""``voicegate asr-bench``: the transcript engines side by side on the same real recordings.

For each engine: per-decode compute (p50 / p95 by utterance length), words heard right on labelled recordings
(Speech Commands words, Free Spoken Digit Dataset digits), agreement with the reference decode on long-form speech
split at pauses, and how often a non-speech vocal sound (coughs, laughter, sneezes, …) is written as a sound
annotation instead of words.
"""

from __future__ import annotations

import json
import platform
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from voicegate.asr.base import Transcript, UtteranceAsr, spoken_text
from voicegate.audio.pcm import load_audio
from voicegate.audio.vad import WINDOW_SAMPLES, SileroVad
from voicegate.bench.corpus import SHARED
from voicegate.config import PIPELINE_SAMPLE_RATE

DIGITS = {"0": "zero", "1": "one", "2": "two", "3": "three", "4": "four", "5": "five", "6": "six", "7": "seven",
          "8": "eight", "9": "nine"}
VOCAL_CLASSES = ("coughing", "laughing", "throat-clearing", "sneezing", "sighing", "panting", "yawning")
BUCKETS = ((0.0, 1.0, "≤ 1 s"), (1.0, 2.0, "1–2 s"), (2.0, 5.0, "2–5 s"), (5.0, 30.0, "5–30 s"))


def words(text: str) -> list[str]:
    """Lower-case words without punctuation or sound annotations; digits spelled out one by one."""
    out: list[str] = []
    for word in "".join(c if c.isalnum() else " " for c in spoken_text(text).lower()).split():
        out += [DIGITS.get(c, c) for c in word] if word.isdigit() else [word]
    return out


def word_errors(ref: list[str], hyp: list[str]) -> int:
    """Levenshtein distance between two word lists."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def lscpu_model() -> str:
    """The CPU's model name as ``lscpu`` prints it (figures differ between AMD and Intel machines)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return platform.processor() or platform.machine()
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def utterances(pcm: np.ndarray, min_secs: float = 0.6, max_secs: float = 8.0) -> Iterator[np.ndarray]:
    """Cut long-form speech at pauses (Silero ≥ 0.5, ≥ 400 ms of silence ends a stretch)."""
    vad = SileroVad()
    voiced = [vad(pcm[i:i + WINDOW_SAMPLES]) >= 0.5 for i in range(0, len(pcm) - WINDOW_SAMPLES + 1, WINDOW_SAMPLES)]
    start, silent = None, 0
    for k, v in enumerate([*voiced, False] + [False] * 13):
        if v:
            start = k if start is None else start
            silent = 0
        elif start is not None:
            silent += 1
            length = (k - start) * WINDOW_SAMPLES
            if silent >= 13 or length >= max_secs * PIPELINE_SAMPLE_RATE:
                lo, hi = max(0, start * WINDOW_SAMPLES - 3200), min(len(pcm), k * WINDOW_SAMPLES)
                if hi - lo >= min_secs * PIPELINE_SAMPLE_RATE:
                    yield pcm[lo:hi]
                start, silent = None, 0


def _labelled(shared: Path, fsdd_every: int) -> list[tuple[str, str, np.ndarray]]:
    items = [("speech_commands", p.parent.name, load_audio(p, PIPELINE_SAMPLE_RATE))
             for p in sorted((shared / "speech/speech_commands").glob("*/*.wav"))]
    fsdd = sorted((shared / "speech/fsdd/recordings").glob("*.wav"))
    items += [("fsdd", DIGITS[p.name[0]], load_audio(p, PIPELINE_SAMPLE_RATE)) for p in fsdd[::fsdd_every]]
    return items


def run_asr_bench(engines: dict[str, UtteranceAsr], out_dir: Path, shared: Path = SHARED, fsdd_every: int = 5,
                  vocal_per_class: int = 12, long_form: bool = True) -> dict[str, Any]:
    """Decode the same clips with every engine; write ``asr.json`` and ``asr.md`` under ``out_dir``."""
    t_start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    labelled = _labelled(shared, fsdd_every)
    long_clips: list[np.ndarray] = []
    if long_form:
        for path in sorted((shared / "speech/asr_test_wavs").glob("*.wav")):
            long_clips += list(utterances(load_audio(path, PIPELINE_SAMPLE_RATE)))
    vocal = [(cls, load_audio(p, PIPELINE_SAMPLE_RATE)[: 3 * PIPELINE_SAMPLE_RATE])
             for cls in VOCAL_CLASSES for p in sorted((shared / "noise/vocal" / cls).glob("*.flac"))[:vocal_per_class]]
    results: dict[str, dict[str, Any]] = {}
    long_text: dict[str, list[list[str]]] = {}
    total = (len(labelled) + len(long_clips) + len(vocal)) * len(engines)
    progress = tqdm(total=total, desc="asr-bench", unit="clip")
    for name, asr in engines.items():
        asr.transcribe(labelled[0][2])  # warm-up
        timings: list[tuple[float, float]] = []
        heard: dict[str, list[bool]] = {}
        misheard: list[str] = []

        def run(pcm: np.ndarray, asr: UtteranceAsr = asr, timings: list[tuple[float, float]] = timings) -> Transcript:
            t = asr.transcribe(pcm)
            timings.append((len(pcm) / PIPELINE_SAMPLE_RATE, t.compute_ms))
            progress.update(1)
            return t

        for dataset, word, pcm in labelled:
            got = run(pcm)
            ok = word in words(got.text)
            heard.setdefault(dataset, []).append(ok)
            if not ok and len(misheard) < 40:
                misheard.append(f"{word} → {got.text[:60]!r}")
        long_text[name] = [words(run(pcm).text) for pcm in long_clips]
        marked: dict[str, list[bool]] = {}
        samples: list[str] = []
        for cls, pcm in vocal:
            got = run(pcm)
            marked.setdefault(cls, []).append(got.nonspeech or not words(got.text))
            if len(samples) < 24:
                samples.append(f"{cls}: {got.text[:60]!r}")
        results[name] = {
            "heard": {k: {"right": int(sum(v)), "of": len(v), "rate": round(float(np.mean(v)), 3)}
                      for k, v in heard.items()},
            "compute_ms": _buckets(timings),
            "vocal_marked_nonspeech": {k: round(float(np.mean(v)), 3) for k, v in marked.items()},
            "vocal_marked_nonspeech_all": round(float(np.mean([x for v in marked.values() for x in v])), 3)
            if marked else None,
            "misheard_examples": misheard, "vocal_examples": samples,
        }
    progress.close()
    names = list(engines)
    if long_clips and len(names) >= 2:
        ref = long_text[names[-1]]
        for name in names[:-1]:
            errors = sum(word_errors(r, h) for r, h in zip(ref, long_text[name], strict=True))
            results[name]["long_form_word_diff_vs_reference"] = round(errors / max(1, sum(map(len, ref))), 4)
    report = {"machine": {"cpu": lscpu_model(), "python": platform.python_version()},
              "clips": {"labelled": len(labelled), "long_form_utterances": len(long_clips), "vocal": len(vocal)},
              "engines": results, "reference": names[-1], "wall_secs": round(time.perf_counter() - t_start, 1)}
    (out_dir / "asr.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    (out_dir / "asr.md").write_text(render(report))
    return report


def _buckets(timings: list[tuple[float, float]]) -> dict[str, dict[str, float | int | None]]:
    out: dict[str, dict[str, float | int | None]] = {}
    for lo, hi, label in BUCKETS:
        ms = [m for secs, m in timings if lo < secs <= hi or (lo == 0.0 and secs <= hi)]
        out[label] = {"n": len(ms), "p50": round(float(np.percentile(ms, 50)), 1) if ms else None,
                      "p95": round(float(np.percentile(ms, 95)), 1) if ms else None}
    short = [m for secs, m in timings if secs <= 2.0]
    out["≤ 2 s"] = {"n": len(short), "p50": round(float(np.percentile(short, 50)), 1) if short else None,
                    "p95": round(float(np.percentile(short, 95)), 1) if short else None}
    return out


def render(report: dict[str, Any]) -> str:
    """The tables a person reads."""
    engines = report["engines"]
    names = list(engines)
    lines = [f"# voicegate asr-bench — {report['machine']['cpu']}", "",
             f"Clips: {report['clips']}; {report['wall_secs']} s wall. Reference: `{report['reference']}`.", "",
             "| | " + " | ".join(f"`{n}`" for n in names) + " |", "|---" * (len(names) + 1) + "|"]

    def row(title: str, cell: Any) -> None:
        lines.append(f"| {title} | " + " | ".join(cell(engines[n]) for n in names) + " |")

    for dataset in engines[names[0]]["heard"]:
        row(f"{dataset}: words heard", lambda e, d=dataset: f"{e['heard'][d]['right']}/{e['heard'][d]['of']} "
                                                            f"({100 * e['heard'][d]['rate']:.1f} %)")
    for bucket in engines[names[0]]["compute_ms"]:
        row(f"compute ms p50 / p95, audio {bucket}",
            lambda e, b=bucket: "{p50} / {p95} (n={n})".format(**e["compute_ms"][b]))
    row("long-form words differing from the reference",
        lambda e: f"{100 * e['long_form_word_diff_vs_reference']:.1f} %" if "long_form_word_diff_vs_reference" in e
        else "—")
    row("vocal sounds written as a sound, not words",
        lambda e: f"{100 * e['vocal_marked_nonspeech_all']:.0f} %" if e["vocal_marked_nonspeech_all"] is not None
        else "—")
    lines += ["", "Per vocal class (share written as a sound annotation or nothing):", ""]
    for n in names:
        lines.append(f"- `{n}`: " + ", ".join(f"{k} {100 * v:.0f} %"
                                               for k, v in engines[n]["vocal_marked_nonspeech"].items()))
    lines.append("")
    return "\n".join(lines)
