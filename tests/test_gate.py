"""The reflex layer on real models and real recordings, on a simulated media clock (compute time included)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from voicegate.agent.demo import MONOLOGUE
from voicegate.audio.pcm import gain, load_audio
from voicegate.bench.scenario import Echo, Outcome, run_scenario
from voicegate.gate.driver import default_asr
from voicegate.gate.relevance import load_judge
from voicegate.tts.base import Speech
from voicegate.tts.espeak import EspeakTts

FADE = 96  # 4 ms at 24 kHz


@pytest.fixture(scope="module")
def bot() -> Speech:
    return asyncio.run(EspeakTts().synthesize(" ".join(MONOLOGUE[:3])))


@pytest.fixture(scope="module")
def models() -> tuple[object, object]:
    return load_judge(), default_asr()


def _clip(path: Path) -> np.ndarray:
    return load_audio(path, 16_000)[: 16_000 * 3]


def _run(bot: Speech, models: tuple[object, object], clip: np.ndarray, **kwargs: object) -> Outcome:
    judge, asr = models
    return run_scenario(bot, clip, 2.0, judge, asr, **kwargs)  # type: ignore[arg-type]


def _speech_started(o: Outcome) -> float:
    return next(e["t_ms"] for e in o.events if e["type"] == "user.speech_started")


def test_spoken_stop_pauses_within_two_windows_then_stops(bot, models, shared_data) -> None:  # type: ignore[no-untyped-def]
    stops = sorted((shared_data / "speech/speech_commands/stop").glob("*.wav"))
    o = _run(bot, models, _clip(stops[0]))
    assert o.pause_ms is not None and o.pause_ms - _speech_started(o) <= 64, "paused within two VAD windows"
    assert o.stopped and o.verdicts[0]["label"] == "interrupt"
    stop_frame = int(np.ceil(o.stop_ms / 20)) + 1
    assert not o.bot_out[stop_frame * 480:].any(), "nothing plays after the stop"


def test_spoken_no_is_an_interruption(bot, models, shared_data) -> None:  # type: ignore[no-untyped-def]
    clip = _clip(sorted((shared_data / "speech/speech_commands/no").glob("*.wav"))[0])
    o = _run(bot, models, clip)
    assert o.stopped, o.verdicts


def test_yes_is_a_backchannel_and_resume_continues_from_the_paused_sample(bot, models, shared_data) -> None:  # type: ignore[no-untyped-def]
    clip = _clip(sorted((shared_data / "speech/speech_commands/yes").glob("*.wav"))[0])
    o = _run(bot, models, clip)
    assert not o.stopped and o.resume_ms is not None, o.verdicts
    assert o.verdicts[-1]["label"] in ("backchannel", "noise")
    frames = o.bot_out.reshape(-1, 480)
    # The pause frame: a 4 ms fade-out, then silence.
    p = next(i for i in range(len(frames)) if frames[i][:FADE].any() and not frames[i][FADE:].any())
    assert abs(p * 20 - o.pause_ms) <= 20
    r = p + 1 + next(i for i, f in enumerate(frames[p + 1:]) if f.any())
    assert r > p + 5, "the bot really was silent while the verdict was pending"
    got = o.bot_out[r * 480 + FADE: r * 480 + FADE + 2400]
    want = bot.pcm[p * 480 + 2 * FADE: p * 480 + 2 * FADE + 2400]
    assert np.array_equal(got, want), "resumed from the exact sample"


def test_sneeze_does_not_stop_the_bot(bot, models, shared_data) -> None:  # type: ignore[no-untyped-def]
    sneezes = sorted((shared_data / "noise/esc10/audio/person_sneeze").glob("*.ogg"))[:3]
    for path in sneezes:
        o = _run(bot, models, _clip(path))
        assert not o.stopped, (path.name, o.verdicts)


def test_steady_background_noise_never_counts_as_speech(bot, models, shared_data) -> None:  # type: ignore[no-untyped-def]
    bed = load_audio(shared_data / "noise/background/data/_background_noise_/running_tap.wav", 16_000)
    o = _run(bot, models, np.zeros(16_000, np.int16), noise=gain(bed[: 16_000 * 6], -10))
    assert not o.stopped, o.verdicts


def test_bot_echo_does_not_stop_the_bot(bot, models) -> None:  # type: ignore[no-untyped-def]
    for delay_ms in (50, 120, 200):
        o = _run(bot, models, np.zeros(16_000, np.int16), echo=Echo(delay_ms=delay_ms, gain_db=-10))
        assert not o.stopped, (delay_ms, o.verdicts)


@pytest.mark.xfail(strict=False, reason="double talk: Whisper tiny.en misreads a short word over the bot's echo "
                   "('stop' → 'This map'); it passes when the keyword spotter fires. "
                   "Needs echo subtraction before ASR.")
def test_user_speaking_over_echo_still_stops_the_bot(bot, models, shared_data) -> None:  # type: ignore[no-untyped-def]
    stops = sorted((shared_data / "speech/speech_commands/stop").glob("*.wav"))
    o = _run(bot, models, gain(_clip(stops[0]), 6), echo=Echo(delay_ms=120, gain_db=-14))
    assert o.stopped, o.verdicts


@pytest.mark.parametrize(("phrase", "stops"), [("hold on", True), ("wait a second", True),
                                               ("what about tomorrow instead", True), ("uh-huh", False),
                                               ("okay", False)])
def test_synthesized_phrases(bot, models, phrase: str, stops: bool) -> None:  # type: ignore[no-untyped-def]
    voice = asyncio.run(EspeakTts(voice="en-us+f3", words_per_minute=180, sample_rate=16_000).synthesize(phrase))
    o = _run(bot, models, voice.pcm)
    assert o.stopped is stops, o.verdicts


def test_user_turn_after_stop_reaches_the_agent(bot, models) -> None:  # type: ignore[no-untyped-def]
    voice = asyncio.run(EspeakTts(sample_rate=16_000).synthesize("stop, what time is it in London"))
    o = _run(bot, models, voice.pcm)
    assert o.stopped
    assert o.user_turns and "london" in o.user_turns[0].lower()
