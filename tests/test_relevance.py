"""The relevance model: the committed fastText model, its CLI, and its figures on data it never saw."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from voicegate.gate.relevance import DEFAULT_MODEL, FastTextJudge, LexiconJudge, normalize

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def judge() -> FastTextJudge:
    return FastTextJudge(DEFAULT_MODEL)


def test_normalize_matches_what_asr_engines_emit() -> None:
    assert normalize("Uh-huh.") == normalize("uh huh") == normalize("uhhuh") == "uhhuh"
    assert normalize("Mm-hmm!") == normalize("mhm") == "mmhmm"
    assert normalize("OK, STOP.") == "okay stop"
    assert normalize("[BLANK_AUDIO]") == "<nonspeech>"


@pytest.mark.parametrize("text", [
    "stop", "wait", "hold on", "hang on a second", "no, I said Tuesday", "what about", "can you repeat that",
    "wait what", "actually i need to change my booking", "how much does it cost", "no no no",
    "sorry, what was the last part", "i don't understand", "could you slow down",
])
def test_interruptions_including_partial_transcripts(judge: FastTextJudge, text: str) -> None:
    assert judge.classify(text).label == "interrupt"


@pytest.mark.parametrize("text", [
    "uh-huh", "Mm-hmm.", "yeah", "okay", "right", "I see", "got it", "sure", "that's great", "oh okay",
    "yeah yeah", "oh wow", "makes sense",
])
def test_backchannels(judge: FastTextJudge, text: str) -> None:
    assert judge.classify(text).label == "backchannel"


@pytest.mark.parametrize("text", ["", "um", "uh", "the", "[noise]", "uh the"])
def test_fillers_and_garbage(judge: FastTextJudge, text: str) -> None:
    assert judge.classify(text).label == "ignore"


def test_lexicon_judge_stands_in_behind_the_same_interface() -> None:
    lex = LexiconJudge()
    assert lex.classify("Hold on, what's that?").label == "interrupt"
    assert lex.classify("uh huh").label == "backchannel"
    assert lex.classify("um").label == "ignore"


def test_model_is_small_and_loads_fast(judge: FastTextJudge) -> None:
    assert DEFAULT_MODEL.stat().st_size < 5_000_000
    assert judge.load_ms < 2000  # generous here; `make bench` reports the real figure


def test_external_mrda_meetings_meet_the_targets(judge: FastTextJudge, shared_data: Path) -> None:
    from voicegate.gate.train_relevance import build_dataset, evaluate

    figures = evaluate(judge.model, build_dataset(shared_data / "text").external)
    assert figures["per_class"]["interrupt"]["recall"] >= 0.95  # type: ignore[index]
    assert figures["backchannel_to_interrupt"] <= 0.05  # type: ignore[operator]


def test_classify_cli_streams_one_json_line_per_input_line_in_order() -> None:
    lines = ["Stop!", "", "uh-huh", "what about friday", "   ", "the"]
    proc = subprocess.run([sys.executable, "-m", "voicegate", "classify"], input="\n".join(lines) + "\n",
                          capture_output=True, text=True, cwd=ROOT, timeout=60, check=True)
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [o["text"] for o in out] == lines
    assert [o["label"] for o in out] == ["interrupt", "ignore", "backchannel", "interrupt", "ignore", "ignore"]
    assert all(0.0 <= o["confidence"] <= 1.0 for o in out)


def test_classify_cli_answers_before_stdin_closes() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "voicegate", "classify"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write("hold on\n")
        proc.stdin.flush()
        first = json.loads(proc.stdout.readline())
        assert first == {"text": "hold on", "label": "interrupt", "confidence": 1.0}
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
