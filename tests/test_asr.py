"""The ASR engines behind one interface: Whisper (embedded default), Vosk (when a model exists), the spotter."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from voicegate.asr import vosk as vosk_module
from voicegate.asr.kws import KeywordSpotter
from voicegate.asr.vosk import VoskAsr, find_vosk_model
from voicegate.asr.whisper import WhisperAsr
from voicegate.audio.pcm import load_audio


def test_whisper_transcribes_real_recordings(shared_data: Path) -> None:
    asr = WhisperAsr()
    for word in ("stop", "yes"):
        clip = load_audio(sorted((shared_data / "speech/speech_commands" / word).glob("*.wav"))[1], 16_000)
        result = asr.transcribe(clip)
        assert word in result.text.lower() and result.final and result.compute_ms > 0


def test_keyword_spotter_hears_stop_and_not_yes(shared_data: Path) -> None:
    stop = load_audio(sorted((shared_data / "speech/speech_commands/stop").glob("*.wav"))[0], 16_000)
    yes = load_audio(sorted((shared_data / "speech/speech_commands/yes").glob("*.wav"))[0], 16_000)
    spotter = KeywordSpotter(("stop", "wait", "no", "hold on"))
    assert spotter.phrases == ("stop", "wait"), "only the phrases it can spot reliably"
    hits = [h for i in range(0, len(stop), 320) for h in spotter.feed(stop[i:i + 320])]
    assert [h.phrase for h in hits] == ["stop"]
    spotter.reset()
    assert not [h for i in range(0, len(yes), 320) for h in spotter.feed(yes[i:i + 320])]


def test_missing_vosk_model_is_reported_once_with_the_fix(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    vosk_module._warned = False
    with caplog.at_level(logging.WARNING):
        assert find_vosk_model(tmp_path / "nope") is None
        assert find_vosk_model(tmp_path / "nope") is None
    warnings = [r.message for r in caplog.records if "Vosk" in r.message]
    assert len(warnings) == 1 and "VOICEGATE_VOSK_MODEL" in warnings[0] and "make models" in warnings[0]


def test_vosk_streams_partials_and_finals(shared_data: Path) -> None:
    model = find_vosk_model()
    if model is None:
        pytest.skip("no Vosk model under models/ or in VOICEGATE_VOSK_MODEL (run `make models` where reachable)")
    asr = VoskAsr(model)
    clip = load_audio(shared_data / "speech/asr_test_wavs/vosk-api_python_example_test.wav", 16_000)
    partials = [t for i in range(0, len(clip), 1600) if (t := asr.accept(clip[i:i + 1600])) is not None]
    final = asr.finish()
    assert partials and any(not t.final for t in partials)
    assert final.final and len(final.text.split()) >= 3
