"""The peers' own barge-in code inside the benchmark (``pip install -e '.[peers]'``; skipped without it).

Each test runs a peer's real code on real recordings and checks the behaviour its defaults promise: Pipecat stops
on VAD alone after ~0.2 s of confident speech and never pauses or resumes; LiveKit pauses after 0.5 s of speech and
then waits for a transcript (commit) or 2 s of silence (resume).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from voicegate.audio.pcm import load_audio
from voicegate.bench.peer_livekit import livekit_available
from voicegate.bench.peer_pipecat import pipecat_available


@pytest.fixture
def clips(shared_data: Path) -> dict[str, np.ndarray]:
    stops = sorted((shared_data / "speech/speech_commands/stop").glob("*.wav"))
    yeses = sorted((shared_data / "speech/speech_commands/yes").glob("*.wav"))
    return {"stop": load_audio(stops[7], 16_000), "stop2": load_audio(stops[2], 16_000),
            "yes": load_audio(yeses[6], 16_000)}


@pytest.fixture
def bot_and_asr() -> tuple[object, object]:
    from voicegate.bench.run import CachingAsr, _bot
    from voicegate.gate.driver import default_asr

    return _bot(None, {}), CachingAsr(default_asr())


def test_pipecat_stops_on_its_vad_without_pausing(clips: dict[str, np.ndarray],
                                                  bot_and_asr: tuple[object, object]) -> None:
    why = pipecat_available()
    if why:
        pytest.skip(why)
    from voicegate.bench.scenario import run_scenario
    from voicegate.gate.relevance import load_judge

    bot, asr = bot_and_asr
    judge = load_judge()
    outcomes = [run_scenario(bot, clips[name], 2.0, judge, asr, policy="pipecat-1.14")  # type: ignore[arg-type]
                for name in ("stop", "stop2", "yes")]
    for o in outcomes:
        assert o.stop_ms is not None, "Pipecat's default strategies stop on any confident speech, 'yes' included"
        assert o.pause_ms is None and o.resume_ms is None, "…with no pause and no resume"
        assert 150.0 <= o.stop_ms - o.onset_ms <= 1000.0, "…once its VAD has heard start_secs=0.2 of speech"
        assert o.verdicts[0]["reasons"] == ["VADUserTurnStartStrategy"]
    words = [run_scenario(bot, clips[name], 2.0, judge, asr, policy="pipecat-1.14-minwords2")  # type: ignore[arg-type]
             for name in ("stop", "stop2", "yes")]
    for o in words:
        if o.stop_ms is not None:
            assert o.verdicts[0]["reasons"] == ["MinWordsUserTurnStartStrategy"]
            assert o.stop_ms - o.onset_ms >= 400.0, "min_words waits for a transcript"
    assert sum(o.stop_ms is not None for o in words) < len(words), "a one-word 'stop' is below min_words=2"


def test_livekit_pauses_after_half_a_second_then_decides(clips: dict[str, np.ndarray],
                                                         bot_and_asr: tuple[object, object]) -> None:
    why = livekit_available()
    if why:
        pytest.skip(why)
    from voicegate.bench.peer_livekit import LiveKitRunner

    bot, asr = bot_and_asr
    runner = LiveKitRunner(asr)  # type: ignore[arg-type]
    names = ("stop", "stop2", "yes")
    outcomes = runner.run_many([{"bot": bot, "clip": clips[name], "at_s": 2.0} for name in names])
    for name, o in zip(names, outcomes, strict=True):
        assert o.pause_ms is not None, f"{name}: LiveKit pauses on sustained speech"
        assert o.pause_ms - o.onset_ms >= 350.0, f"{name}: …only after min_duration=0.5 s of it"
        assert o.verdict_ms is not None and o.verdict_ms > o.pause_ms, f"{name}: …then commits or resumes"
        assert o.stop_ms is None or o.stop_ms >= o.pause_ms
    stopped = [o for o in outcomes if o.stop_ms is not None]
    assert len(stopped) >= 2, "a transcript commits the stop: the spoken stops (and a transcribed 'yes') stop it"
    assert all(o.user_turns for o in stopped), "…each after a transcript of the user's speech"
    assert runner.audio_s > 0 and runner.cpu_s > 0
