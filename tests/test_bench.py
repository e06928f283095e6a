"""The barge-in benchmark: manifest format, metrics arithmetic, and a real run on a tiny manifest."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from voicegate.bench.corpus import ManifestError, load_manifest
from voicegate.bench.metrics import penalty_s, summarize

ROOT = Path(__file__).resolve().parents[1]


def _row(label: str, **kw: object) -> dict[str, object]:
    row: dict[str, object] = {"label": label, "onset_ms": 1000.0, "sound_end_ms": 1400.0, "pause_ms": None,
                              "silence_ms": None, "stop_ms": None, "resume_ms": None, "verdict_ms": None,
                              "remaining_at_stop_s": 0.0, "bot_after_onset_s": 0.0, "stop_phrase": False}
    row.update(kw)
    return row


def test_metrics_arithmetic() -> None:
    rows = [
        _row("interrupt", silence_ms=1040.0, pause_ms=1040.0, stop_ms=1300.0, verdict_ms=1300.0),  # hit: 0.3 s
        _row("interrupt", silence_ms=1060.0, pause_ms=1060.0, resume_ms=2000.0, verdict_ms=1900.0,
             bot_after_onset_s=4.0),  # miss: 4 s of unwanted speech
        _row("backchannel", pause_ms=1050.0, resume_ms=1650.0, verdict_ms=1640.0),  # correct resume: 0
        _row("noise", pause_ms=1020.0, stop_ms=1500.0, verdict_ms=1500.0, remaining_at_stop_s=6.0),  # false stop
    ]
    m = summarize(rows)  # type: ignore[arg-type]
    assert m["missed_stop_rate"] == 0.5
    assert m["false_stop_rate"] == 0.5
    assert m["time_to_pause_ms"] == {"p50": 50.0, "p95": 59.0}
    assert m["resume_gap_ms"]["p50"] == 600.0
    assert [penalty_s(r) for r in rows] == [0.3, 4.0, 0.0, 6.0]  # type: ignore[arg-type]
    assert m["apt_s"] == pytest.approx((0.3 + 4.0 + 6.0) / 4, abs=1e-3)


def test_manifest_paths_resolve_against_its_folder_and_errors_name_the_line(tmp_path: Path) -> None:
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "a.wav").write_bytes(b"")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"id": "a", "label": "noise", "audio": "clips/a.wav", "at_s": 1.5}\n\n'
                        '{"id": "e", "label": "echo", "audio": "clips/a.wav", "at_s": 2, "gain_db": -3}\n')
    scenarios = load_manifest(manifest)
    assert scenarios[0].audio == tmp_path / "clips" / "a.wav"
    assert scenarios[1].echo_delay_ms == 120.0 and scenarios[1].gain_db == -3.0
    manifest.write_text('{"id": "a", "label": "cough", "audio": "clips/a.wav", "at_s": 1}\n')
    with pytest.raises(ManifestError, match=r"m\.jsonl:1: label must be one of"):
        load_manifest(manifest)
    manifest.write_text('{"id": "a", "label": "noise", "audio": "missing.wav", "at_s": 1}\n')
    with pytest.raises(ManifestError, match="not found"):
        load_manifest(manifest)


def test_bench_runs_a_manifest_and_writes_the_report(tmp_path: Path, shared_data: Path) -> None:
    stop = sorted((shared_data / "speech/speech_commands/stop").glob("*.wav"))[7]  # spotter and Whisper both hear it
    sneeze = sorted((shared_data / "noise/esc10/audio/person_sneeze").glob("*.ogg"))[0]
    manifest = tmp_path / "held_out.jsonl"
    manifest.write_text("\n".join(json.dumps(d) for d in [
        {"id": "stop", "label": "interrupt", "audio": str(stop), "at_s": 2.0, "transcript": "stop"},
        {"id": "sneeze", "label": "noise", "audio": str(sneeze), "at_s": 2.5, "gain_db": -6},
        {"id": "echo", "label": "echo", "at_s": 2.0},
    ]) + "\n")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "voicegate", "bench", "--corpus", str(manifest), "--out", str(out),
                           "--policies", "voicegate", "vad_only"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["corpus"]["scenarios"] == 3
    assert set(report["policies"]) == {"voicegate", "vad_only"}
    for metrics in report["policies"].values():
        for key in ("time_to_pause_ms", "verdict_latency_ms", "resume_gap_ms"):
            assert set(metrics[key]) == {"p50", "p95"}
        for key in ("false_stop_rate", "missed_stop_rate", "apt_s"):
            assert key in metrics
    assert set(report["policies"]["voicegate"]["cpu_per_audio_s"]) == {"vad", "kws", "echo", "asr"}
    by_id = {s["id"]: s["outcomes"] for s in report["scenarios"]}
    assert by_id["stop"]["voicegate"]["stop_ms"] is not None, "voicegate stops on a spoken stop"
    assert by_id["sneeze"]["voicegate"]["stop_ms"] is None, "…and not on a sneeze"
    assert by_id["echo"]["voicegate"]["stop_ms"] is None, "…nor on its own echo"
    assert (out / "report.md").read_text().startswith("# voicegate bench")
    assert (out / "latency_cdf.png").stat().st_size > 10_000
    assert any(p.startswith("timeline_") for p in report["plots"])


def test_bench_rejects_a_bad_manifest_with_a_clear_message(tmp_path: Path) -> None:
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text('{"id": "x", "label": "noise"}\n')
    proc = subprocess.run([sys.executable, "-m", "voicegate", "bench", "--corpus", str(manifest), "--out",
                           str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "bad.jsonl:1" in proc.stderr and "at_s" in proc.stderr


def test_bench_live_plays_scenarios_through_real_calls(tmp_path: Path, shared_data: Path) -> None:
    """``--live``: each scenario is a real WebRTC call to a ``voicegate serve`` process; figures come from the
    caller's side and sit beside the simulated ones."""
    stops = sorted((shared_data / "speech/speech_commands/stop").glob("*.wav"))
    yeses = sorted((shared_data / "speech/speech_commands/yes").glob("*.wav"))
    manifest = tmp_path / "live.jsonl"
    manifest.write_text("\n".join(json.dumps(d) for d in [
        {"id": "stop", "label": "interrupt", "audio": str(stops[7]), "at_s": 2.0, "transcript": "stop"},
        {"id": "yes", "label": "backchannel", "audio": str(yeses[6]), "at_s": 2.0, "transcript": "yes"},
    ]) + "\n")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "voicegate", "bench", "--live", "--corpus", str(manifest),
                           "--out", str(out), "--policies", "voicegate"], cwd=ROOT, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    live = {r["id"]: r for r in report["live"]["scenarios"]}
    assert report["live"]["failed_calls"] == 0 and set(live) == {"stop", "yes"}
    stop, yes = live["stop"], live["yes"]
    assert stop["stop_ms"] is not None and stop["stop_ms"] > stop["onset_ms"], "the spoken stop stopped the bot"
    assert stop["verdict"] == "interrupt"
    if stop["audible_at_onset"]:
        assert stop["pause_ms"] is not None and stop["pause_ms"] - stop["onset_ms"] < 1000
    assert yes["stop_ms"] is None, "a 'yes' does not stop the bot"
    if yes["pause_ms"] is not None:
        assert yes["resume_ms"] is not None and yes["resume_ms"] > yes["sound_end_ms"], "…it resumes after it"
    md = (out / "report.md").read_text()
    assert "Simulated vs. live" in md and "| figure | simulated | live |" in md
