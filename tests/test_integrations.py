"""The reflex as a library, and inside the frameworks people run: a Pipecat 1.14 pipeline and a LiveKit Agents 1.8.9
``AgentSession`` (``pip install -e '.[peers]'``, ``make test-peers``; the framework tests skip without the extra).

On several real recordings each: a stop phrase stops the bot (the framework's own interruption fires once, the
caller's turn reaches the LLM once); a backchannel pauses and resumes it with not one sample lost or repeated —
checked by sample position: the bot's line has no zero sample, the fades are off, so the non-zero samples the caller
heard must be exactly the line, in order — and the framework's interruption never fires. What voicegate decides is
asserted as a rate (a transcript can differ between CPUs, or come too late on a loaded one); what the integration
does with each decision is asserted for every call.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from voicegate.audio.pcm import load_audio
from voicegate.config import PlayoutOptions
from voicegate.tts.base import Speech

NO_FADE = PlayoutOptions(fade_ms=0.0)
"""Fades scale the samples around a pause; without them the samples the caller hears are the bot's, unchanged."""


@pytest.fixture(scope="module")
def recordings() -> dict[str, list[np.ndarray]]:
    from tests.conftest import SHARED_DATA

    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    commands = SHARED_DATA / "speech/speech_commands"
    stops = sorted((commands / "stop").glob("*.wav"))
    yeses = sorted((commands / "yes").glob("*.wav"))
    return {"stop": [load_audio(stops[i], 16_000) for i in (7, 2)],
            "backchannel": [load_audio(yeses[i], 16_000) for i in (6, 4)]}


@pytest.fixture(scope="module")
def bot_line() -> Speech:
    """The demo's opening line (espeak-ng) with every zero sample made 1, so position can be read from content."""
    from voicegate.bench.run import _bot

    bot = _bot(None, {})
    pcm = bot.pcm.copy()
    pcm[pcm == 0] = 1
    return Speech(bot.text, pcm, bot.sample_rate, bot.word_ends)


def heard_exactly(heard: np.ndarray, line: np.ndarray) -> bool:
    """The non-zero samples heard are the line's first ones, in order: none lost, none repeated."""
    nonzero = heard[heard != 0]
    return len(nonzero) >= len(line) // 10 and np.array_equal(nonzero, line[:len(nonzero)])


# -- the library ---------------------------------------------------------------------------------------------------


def test_reflex_library_pauses_resumes_exactly_and_stops(recordings: dict[str, list[np.ndarray]],
                                                         bot_line: Speech) -> None:
    from voicegate.bench.run import CachingAsr
    from voicegate.gate.driver import default_asr
    from voicegate.reflex import Reflex

    asr = CachingAsr(default_asr())
    for label, clips in recordings.items():
        for clip in clips:
            reflex = Reflex.simulated(asr, bot_sample_rate=bot_line.sample_rate, playout=NO_FADE)
            turns: list[str] = []
            stops: list[int] = []
            events: list[dict[str, Any]] = []
            reflex.on_turn = turns.append
            reflex.on_stop = lambda: stops.append(1)  # noqa: B023
            reflex.add_listener(events.append)
            step = bot_line.sample_rate // 25
            for i in range(0, len(bot_line.pcm), step):  # in pieces, as a TTS streams it
                reflex.feed_bot(bot_line.pcm[i:i + step], bot_line.sample_rate)
            mic = np.zeros(16_000 * 7, np.int16)
            mic[32_000:32_000 + len(clip)] = clip[: len(mic) - 32_000]
            heard = []
            for k in range(len(mic) // 320):
                reflex.advance(k * 20)
                heard.append(reflex.next_bot_frame())
                # The caller's audio at 48 kHz: converted inside.
                reflex.feed_user_simulated(np.repeat(mic[k * 320:(k + 1) * 320], 3), 48_000)
            reflex.advance(float("inf"))
            reflex.close()
            kinds = [e["type"] for e in events]
            assert "bot.paused" in kinds, f"{label}: the bot pauses on the sound"
            assert kinds.count("bot.speaking") == 1, "the pieces of one stretch of audio are one utterance"
            if label == "stop":
                assert stops == [1] and "bot.stopped" in kinds
                assert len(turns) == 1 and "stop" in turns[0].lower()
            else:
                assert not stops and not turns and "bot.resumed" in kinds
                assert heard_exactly(np.concatenate(heard), bot_line.pcm), "resumed from the same sample"


def test_reflex_converts_the_bot_rate_inside(bot_line: Speech) -> None:
    from voicegate.bench.run import CachingAsr
    from voicegate.gate.driver import default_asr
    from voicegate.reflex import Reflex

    reflex = Reflex.simulated(CachingAsr(default_asr()), bot_sample_rate=48_000)
    reflex.feed_bot(bot_line.pcm, bot_line.sample_rate)
    expected = len(bot_line.pcm) * 48_000 // bot_line.sample_rate
    assert abs(reflex.queued_bot_samples - expected) <= 48
    assert len(reflex.next_bot_frame()) == 960 and reflex.bot_active
    reflex.close()


# -- Pipecat -------------------------------------------------------------------------------------------------------


@pytest.fixture
async def fake_llm() -> AsyncIterator[Any]:
    from tests.fake_llm import FakeLlm

    llm = FakeLlm(reply="All right.")
    await llm.start()
    try:
        yield llm
    finally:
        await llm.close()


async def _pipecat_call(clip: np.ndarray, bot: Speech, llm_url: str) -> dict[str, Any]:
    """One call through a real Pipecat pipeline: [caller, VoicegateInput, user aggregator, OpenAI LLM service,
    VoicegateOutput, speaker]; the bot's line enters as a TTS pushes it; the caller's audio in real time."""
    from pipecat.frames.frames import (
        EndFrame,
        InputAudioRawFrame,
        InterruptionFrame,
        OutputAudioRawFrame,
        TTSAudioRawFrame,
        TTSStartedFrame,
        TTSStoppedFrame,
        TTSTextFrame,
    )
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.runner import PipelineRunner
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker
    from pipecat.processors.aggregators.llm_context import LLMContext
    from pipecat.processors.aggregators.llm_response_universal import (
        LLMContextAggregatorPair,
        LLMUserAggregatorParams,
    )
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
    from pipecat.services.openai.llm import OpenAILLMService

    from voicegate.integrations.pipecat import voicegate_processors, voicegate_turn_strategies

    class Speaker(FrameProcessor):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.audio: list[tuple[float, bytes, bool]] = []
            self.interruptions = 0

        async def process_frame(self, frame: Any, direction: Any) -> None:
            await super().process_frame(frame, direction)
            if isinstance(frame, OutputAudioRawFrame):
                self.audio.append((time.monotonic(), frame.audio, isinstance(frame, TTSAudioRawFrame)))
            elif isinstance(frame, InterruptionFrame) and direction == FrameDirection.DOWNSTREAM:
                self.interruptions += 1
            await self.push_frame(frame, direction)

    vg_in, vg_out = voicegate_processors(playout=NO_FADE)
    pair = LLMContextAggregatorPair(LLMContext(), user_params=LLMUserAggregatorParams(
        user_turn_strategies=voicegate_turn_strategies()))
    llm = OpenAILLMService(api_key="test", base_url=llm_url, model="test-model")
    speaker = Speaker()
    pipeline = Pipeline([vg_in, pair.user(), llm, vg_out, speaker, pair.assistant()])
    worker = PipelineWorker(pipeline, params=PipelineParams(audio_out_sample_rate=bot.sample_rate),
                            idle_timeout_secs=None, enable_rtvi=False)
    runner = PipelineRunner(handle_sigint=False)
    run = asyncio.create_task(runner.run(worker))
    for _ in range(600):  # the reflex loads its models in the pair's set-up
        if vg_out.reflex is not None:
            break
        await asyncio.sleep(0.05)
    step = bot.sample_rate * 40 // 1000
    await worker.queue_frames([TTSStartedFrame(), TTSTextFrame(text=bot.text, text_type="sentence")]
                              + [TTSAudioRawFrame(audio=bot.pcm[i:i + step].tobytes(), sample_rate=bot.sample_rate,
                                                  num_channels=1) for i in range(0, len(bot.pcm), step)]
                              + [TTSStoppedFrame()])
    mic = np.zeros(16_000 * 6, np.int16)
    mic[24_000:24_000 + len(clip)] = clip[: len(mic) - 24_000]
    t0 = time.monotonic()
    for k in range(len(mic) // 320):
        await asyncio.sleep(max(0.0, t0 + (k + 1) * 0.02 - time.monotonic()))
        await worker.queue_frame(InputAudioRawFrame(audio=mic[k * 320:(k + 1) * 320].tobytes(),
                                                    sample_rate=16_000, num_channels=1))
    await asyncio.sleep(0.5)
    await worker.queue_frame(EndFrame())
    await asyncio.wait_for(run, 60)
    heard = np.frombuffer(b"".join(a for _, a, _ in speaker.audio), dtype=np.int16)
    events = vg_in.reflex.events.history if vg_in.reflex is not None else []
    return {"heard": heard, "interruptions": speaker.interruptions, "stats": vg_in.stats, "events": events,
            "tts_after_stop": _tts_after_stop(speaker.audio, events, vg_in.reflex)}


def _tts_after_stop(audio: list[tuple[float, bytes, bool]], events: list[dict[str, Any]], reflex: Any) -> float:
    """Seconds of the bot's audio that reached the output after the stop."""
    stopped = [e for e in events if e["type"] == "bot.stopped"]
    if not stopped or reflex is None:
        return 0.0
    at = reflex.clock.start_secs + stopped[0]["t_ms"] / 1000 + 0.05
    samples = sum(len(a) // 2 for t, a, tts in audio if tts and t > at and np.frombuffer(a, np.int16).any())
    return samples / reflex.bot_sample_rate


async def test_pipecat_pipeline_stops_once_and_resumes_exactly(recordings: dict[str, list[np.ndarray]],
                                                               bot_line: Speech, fake_llm: Any) -> None:
    from voicegate.bench.peer_pipecat import _quiet_loguru, pipecat_available

    if why := pipecat_available():
        pytest.skip(why)
    _quiet_loguru()
    calls = [(label, clip) for label, clips in recordings.items() for clip in clips]
    results = await asyncio.gather(*(_pipecat_call(clip, bot_line, fake_llm.base_url) for _, clip in calls))
    decided = []
    for (label, _), r in zip(calls, results, strict=True):
        kinds = [e["type"] for e in r["events"]]
        assert "bot.paused" in kinds, f"{label}: voicegate holds the bot's audio at the sound"
        stopped = "bot.stopped" in kinds
        decided.append((label, stopped))
        if stopped:
            assert r["interruptions"] == 1, f"Pipecat's own InterruptionFrame fires once on a stop: {r}"
            assert r["stats"].interruptions == 1 and len(r["stats"].turns) == 1
            assert r["tts_after_stop"] == 0.0, "nothing of the stopped reply is heard after the stop"
        else:
            assert r["interruptions"] == 0, "…and never without one"
            assert "bot.resumed" in kinds
            assert heard_exactly(r["heard"], bot_line.pcm), "resumed from the same sample: none lost or repeated"
    assert sum(stopped for label, stopped in decided if label == "stop") >= 1, "a spoken stop stops the bot"
    assert sum(not stopped for label, stopped in decided if label != "stop") >= 1, "a 'yes' resumes it"
    turns = sorted(t for r in results for t in r["stats"].turns)
    assert len(turns) == sum(stopped for _, stopped in decided)
    asked = sorted(str(request["messages"][-1]["content"]) for request in fake_llm.requests)
    assert asked == turns, "each stop's turn reaches the LLM exactly once; a backchannel never"


# -- LiveKit -------------------------------------------------------------------------------------------------------


def _recording_llm() -> Any:
    from livekit.agents import llm
    from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS

    class Stream(llm.LLMStream):  # type: ignore[misc]
        async def _run(self) -> None:
            self._event_ch.send_nowait(llm.ChatChunk(id="reply", delta=llm.ChoiceDelta(role="assistant",
                                                                                       content="All right.")))

    class RecordingLlm(llm.LLM):  # type: ignore[misc]
        """A LiveKit LLM that records each request (a paid model's stand-in)."""

        def __init__(self) -> None:
            super().__init__()
            self.requests: list[str] = []

        def chat(self, *, chat_ctx: Any, tools: Any = None, conn_options: Any = DEFAULT_API_CONNECT_OPTIONS,
                 **_kwargs: Any) -> Any:
            users = [m for m in chat_ctx.items if getattr(m, "role", None) == "user"]
            self.requests.append(users[-1].text_content if users else "")
            return Stream(self, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options)

    return RecordingLlm()


def test_livekit_session_stops_once_and_resumes_exactly(recordings: dict[str, list[np.ndarray]],
                                                        bot_line: Speech) -> None:
    from voicegate.bench.peer_livekit import LiveKitRunner, livekit_available

    if why := livekit_available():
        pytest.skip(why)
    from voicegate.bench.run import CachingAsr
    from voicegate.gate.driver import default_asr

    llm = _recording_llm()
    runner = LiveKitRunner(CachingAsr(default_asr()), voicegate=True, llm=llm, playout=NO_FADE)
    calls = [(label, clip) for label, clips in recordings.items() for clip in clips]
    outcomes = runner.run_many([{"bot": bot_line, "clip": clip, "at_s": 1.5} for _, clip in calls])
    for (label, _), o in zip(calls, outcomes, strict=True):
        assert o.pause_ms is not None, f"{label}: voicegate pauses LiveKit's audio output at the sound"
        if o.stop_ms is not None:
            assert o.extra["interruptions"] == 1, "session.interrupt() once on a stop"
        else:
            assert o.extra["interruptions"] == 0, "…and never without one"
            assert o.resume_ms is not None
            assert heard_exactly(o.bot_out, bot_line.pcm), "resumed from the same sample: none lost or repeated"
    assert sum(o.stop_ms is not None for (label, _), o in zip(calls, outcomes, strict=True) if label == "stop") >= 1
    assert sum(o.stop_ms is None for (label, _), o in zip(calls, outcomes, strict=True) if label != "stop") >= 1
    turns = sorted(t for o in outcomes for t in o.user_turns)
    assert len(turns) == sum(o.stop_ms is not None for o in outcomes)
    assert sorted(llm.requests) == turns, "each stop's turn reaches LiveKit's LLM exactly once; a backchannel never"
    assert runner.plumbing_cpu_s > 0


# -- the examples --------------------------------------------------------------------------------------------------

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


async def test_pipecat_example_runs_offline_over_small_webrtc(recordings: dict[str, list[np.ndarray]]) -> None:
    """examples/pipecat/bot.py as a user runs it (no keys, no internet): a real WebRTC caller connects to its
    ``POST /offer``, hears the bot, says "stop" over it, hears it go silent, then hears the reply."""
    from voicegate.bench.peer_pipecat import _quiet_loguru, pipecat_available

    if why := pipecat_available():
        pytest.skip(why)
    import importlib.util

    from aiohttp.test_utils import TestServer

    from voicegate.audio.pcm import resample
    from voicegate.client import Caller, ClipTrack

    _quiet_loguru()
    spec = importlib.util.spec_from_file_location("pipecat_example_bot", EXAMPLES / "pipecat/bot.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    server = TestServer(example.make_app(), host="127.0.0.1")
    await server.start_server()
    stop_at_s = 6.0
    caller = Caller(f"http://127.0.0.1:{server.port}",
                    mic=ClipTrack(resample(recordings["stop"][0], 16_000, 48_000), delay_secs=stop_at_s))
    try:
        t0 = time.monotonic()
        await caller.connect()
        await asyncio.sleep(stop_at_s + 7.0)
    finally:
        await caller.close()
        await server.close()
    levels = [(t - t0, rms) for t, rms in caller.bot_levels]
    speaking = [t for t, rms in levels if rms > 300]
    assert speaking and speaking[0] < stop_at_s - 1.0, "the bot talks (espeak-ng through Pipecat, offline)"
    after = [t for t in speaking if t > stop_at_s + 0.3]
    gaps = [b - a for a, b in itertools.pairwise(after)]
    assert gaps and max(gaps) >= 0.4, "the bot stops on 'stop' …"
    assert after and after[-1] > stop_at_s + 1.5, "… then answers …"
    assert after[-1] < levels[-1][0] - 1.0, "… and stays quiet (the story it was reading does not come back)"


def test_livekit_example_check_runs_without_a_server(shared_data: Path) -> None:
    """examples/livekit/agent.py check: a real AgentSession, voicegate attached, no LiveKit server."""
    from voicegate.bench.peer_livekit import livekit_available

    if why := livekit_available():
        pytest.skip(why)
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(EXAMPLES / "livekit/agent.py"), "check"], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    assert "bot.resumed" in done.stdout and "bot.stopped" in done.stdout
