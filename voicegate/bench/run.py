"""``voicegate bench``: the real gate on a scenario corpus, with medians and p95s.

This is the reflex layer's measurement harness (the voicegate policy only, on the built-in corpus or a
manifest); peer-policy emulations and plots are still to come.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from voicegate.agent.demo import MONOLOGUE
from voicegate.audio.pcm import gain, load_audio
from voicegate.audio.vad import SileroVad
from voicegate.bench.scenario import Echo, run_scenario
from voicegate.gate.driver import default_asr
from voicegate.gate.relevance import load_judge
from voicegate.gate.train_relevance import DEFAULT_DATA
from voicegate.tts.espeak import EspeakTts

SHARED = DEFAULT_DATA.parent


@dataclass(frozen=True)
class Scenario:
    """One manifest line."""

    id: str
    label: str
    audio: Path | None
    at_s: float
    gain_db: float = 0.0
    synth: str | None = None
    echo_delay_ms: float | None = None


def builtin_corpus(quick: bool) -> list[Scenario]:
    """Scenarios from ../shared/data plus espeak-ng phrases for what no recording covers."""
    per = 3 if quick else 8
    out: list[Scenario] = []
    cmd = SHARED / "speech" / "speech_commands"
    for word, label in (("stop", "interrupt"), ("no", "interrupt"), ("yes", "backchannel"), ("right", "backchannel")):
        for i, path in enumerate(sorted((cmd / word).glob("*.wav"))[:per]):
            out.append(Scenario(f"{word}-{i}", label, path, 2.0 + 0.37 * i))
    esc = SHARED / "noise" / "esc10" / "audio"
    for cls in ("person_sneeze", "dog_bark", "clock_tick", "baby_cry"):
        for i, path in enumerate(sorted((esc / cls).glob("*.ogg"))[: max(2, per // 2)]):
            out.append(Scenario(f"{cls}-{i}", "noise", path, 2.0 + 0.29 * i, gain_db=-6))
    for name in ("typing", "applause", "piano")[: 2 if quick else 3]:
        out.append(Scenario(name, "noise", SHARED / "noise" / "freesound" / f"{name}.wav", 2.0, gain_db=-6))
    phrases = [("hold on", "interrupt"), ("wait a second", "interrupt"), ("what about tomorrow", "interrupt"),
               ("uh-huh", "backchannel"), ("okay", "backchannel"), ("yeah", "backchannel")]
    for voice in ("en-us", "en-us+f3") if quick else ("en-us", "en-us+f3", "en-gb", "en-us+m7"):
        for phrase, label in phrases:
            out.append(Scenario(f"tts-{voice}-{phrase}", label, None, 2.2, synth=f"{voice}|{phrase}"))
    for delay in (50, 120, 200) if quick else (50, 90, 120, 160, 200):
        out.append(Scenario(f"echo-{delay}ms", "echo", None, 2.0, echo_delay_ms=delay))
    return out


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def _summary(values: list[float]) -> dict[str, float | None]:
    return {"p50": _pct(values, 50), "p95": _pct(values, 95), "n": float(len(values))}


def run_bench(quick: bool, out_dir: Path) -> dict[str, Any]:
    """Run the corpus through the real gate and write ``report.json`` and ``report.md``."""
    judge, asr = load_judge(), default_asr()
    tts = EspeakTts()
    bot = asyncio.run(tts.synthesize(" ".join(MONOLOGUE[:4])))
    corpus = builtin_corpus(quick)
    rows: list[dict[str, Any]] = []
    cpu: dict[str, float] = {}
    audio_s = 0.0
    for sc in tqdm(corpus, desc="scenarios", unit="sc"):
        if sc.synth:
            voice, phrase = sc.synth.split("|")
            clip = asyncio.run(EspeakTts(voice=voice, sample_rate=16_000).synthesize(phrase)).pcm
        elif sc.audio is not None:
            clip = load_audio(sc.audio, 16_000)[: 16_000 * 4]
        else:
            clip = np.zeros(16_000, np.int16)
        echo = Echo(delay_ms=sc.echo_delay_ms, gain_db=-10) if sc.echo_delay_ms is not None else None
        o = run_scenario(bot, gain(clip, sc.gain_db), sc.at_s, judge, asr, echo=echo)
        for k, v in o.cpu_ms.items():
            cpu[k] = cpu.get(k, 0.0) + v
        audio_s += len(o.mic) / 16_000
        verdict = o.verdicts[0] if o.verdicts else None
        rows.append({
            "id": sc.id, "label": sc.label, "onset_ms": o.onset_ms, "pause_ms": o.pause_ms, "stop_ms": o.stop_ms,
            "resume_ms": o.resume_ms, "sound_end_ms": o.sound_end_ms,
            "verdict": verdict["label"] if verdict else None, "reasons": verdict["reasons"] if verdict else [],
            "verdict_ms": verdict["t_ms"] if verdict else None,
        })
    interrupts = [r for r in rows if r["label"] == "interrupt"]
    others = [r for r in rows if r["label"] != "interrupt"]
    missed = [r for r in interrupts if r["stop_ms"] is None or r["stop_ms"] - r["onset_ms"] > 1500]
    false_stops = [r for r in others if r["stop_ms"] is not None]
    resume_after_end = [r["resume_ms"] - r["sound_end_ms"] for r in others if r["resume_ms"] is not None]
    vad = SileroVad()
    window = np.random.default_rng(0).integers(-3000, 3000, 512).astype(np.int16)
    t0 = time.perf_counter()
    for _ in range(500):
        vad(window)
    vad_window_ms = (time.perf_counter() - t0) / 500 * 1000
    metrics = {
        "time_to_pause_ms": _summary([r["pause_ms"] - r["onset_ms"] for r in rows if r["pause_ms"] is not None]),
        "verdict_latency_ms": _summary([r["verdict_ms"] - r["onset_ms"] for r in rows if r["verdict_ms"]]),
        "false_stop_rate": round(len(false_stops) / max(1, len(others)), 3),
        "missed_stop_rate": round(len(missed) / max(1, len(interrupts)), 3),
        "resume_after_sound_end_ms": _summary(resume_after_end),
        "cpu_per_audio_s": {k: round(v / 1000 / audio_s, 4) for k, v in cpu.items()},
        "vad_ms_per_window": round(vad_window_ms, 3),
    }
    report = {"corpus": {"scenarios": len(rows), "quick": quick,
                         "labels": {lab: sum(r["label"] == lab for r in rows)
                                    for lab in ("interrupt", "backchannel", "noise", "echo")}},
              "policies": {"voicegate": metrics}, "scenarios": rows,
              "missed": [r["id"] for r in missed], "false_stops": [r["id"] for r in false_stops]}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=1))
    (out_dir / "report.md").write_text(render_markdown(report))
    return report


def render_markdown(report: dict[str, Any]) -> str:
    """A table a person reads."""
    m = report["policies"]["voicegate"]
    lines = [f"# voicegate bench ({report['corpus']['scenarios']} scenarios, {report['corpus']['labels']})", "",
             "| metric | value |", "|---|---|"]
    for key, value in m.items():
        lines.append(f"| {key} | {value} |")
    lines += ["", f"missed: {report['missed']}", f"false stops: {report['false_stops']}", ""]
    return "\n".join(lines)
