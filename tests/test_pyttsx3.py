"""``VOICEGATE_TTS=pyttsx3``: espeak-ng in-process through pyttsx3 — its word timings, and a real call with it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import numpy as np
import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import base_url
from tests.test_call import _wait_for
from voicegate.audio.pcm import load_audio, resample
from voicegate.client import Caller, ClipTrack
from voicegate.config import Options, options_from_env
from voicegate.server.app import SESSIONS, create_app
from voicegate.tts.espeak import EspeakTts
from voicegate.tts.pyttsx import PyttsxTts

pytest.importorskip("pyttsx3")
SENTENCE = "Let me tell you about a quiet morning by the sea."


def test_pyttsx3_is_selected_by_environment() -> None:
    assert options_from_env({"VOICEGATE_TTS": "pyttsx3"}).agent.tts == "pyttsx3"


async def test_pyttsx3_speaks_with_espeaks_own_word_timings() -> None:
    speech = await PyttsxTts(sample_rate=24_000).synthesize(SENTENCE)
    cli = await EspeakTts(sample_rate=24_000).synthesize(SENTENCE)
    assert speech.sample_rate == 24_000 and speech.text == SENTENCE
    assert 0.8 < len(speech.pcm) / len(cli.pcm) < 1.25, "the same voice at the same rate"
    assert float(np.sqrt(np.mean(speech.pcm.astype(np.float64) ** 2))) > 500
    assert len(speech.word_ends) == len(SENTENCE.split())
    chars, samples = zip(*speech.word_ends, strict=True)
    assert list(chars) == sorted(chars) and list(samples) == sorted(samples) and samples[-1] == len(speech.pcm)
    # The history keeps only words fully played: halfway through, a strict prefix ending on a whole word.
    half = speech.text_heard(len(speech.pcm) // 2)
    assert SENTENCE.startswith(half) and 2 <= len(half.split()) < len(SENTENCE.split())
    assert speech.text_heard(0) == "" and speech.text_heard(len(speech.pcm)) == SENTENCE


async def test_pyttsx3_synthesis_does_not_block_the_event_loop() -> None:
    tts = PyttsxTts()
    await tts.synthesize("Warm up.")
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        for text in ("The tide is low, and the sand is still cool from the night.",
                     "A few gulls are arguing over something only they can see."):
            await tts.synthesize(text)
    finally:
        task.cancel()
    assert ticks >= 2, "the loop kept running while pyttsx3 synthesized on its own thread"


@pytest.fixture
async def pyttsx3_server() -> AsyncIterator[TestServer]:
    options = Options()
    srv = TestServer(create_app(replace(options, agent=replace(options.agent, tts="pyttsx3"))), host="127.0.0.1")
    await srv.start_server()
    try:
        yield srv
    finally:
        await srv.close()


async def test_pyttsx3_speaks_in_a_real_call_and_is_stopped(pyttsx3_server: TestServer, shared_data) -> None:  # type: ignore[no-untyped-def]
    server = pyttsx3_server
    caller = Caller(base_url(server), ClipTrack())
    await caller.connect()
    try:
        speaking = await caller.wait_event("bot.speaking", timeout=10)
        assert speaking["text"].startswith("Hi!")
        await asyncio.sleep(1.5)
        assert caller.bot_rms(last_frames=25) > 200, "the caller hears pyttsx3's voice"
        clip = load_audio(sorted((shared_data / "speech/speech_commands/stop").glob("*.wav"))[7], 16_000)
        level = (clip.astype(np.float32) * (16_000 / max(1, int(np.abs(clip).max())))).astype(np.int16)
        caller.mic.schedule(resample(level, 16_000, 48_000), 0.0)
        await caller.wait_event("bot.stopped", timeout=10)
        reply = await caller.wait_event("agent.reply", timeout=15)
        assert reply["text"].startswith("Okay, I stopped")
        assert not [e for e in caller.events if e["type"] == "error" and e.get("stage") == "tts"], caller.events
    finally:
        await caller.close()
    await _wait_for(lambda: not server.app[SESSIONS])
