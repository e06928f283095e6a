"""The turn transcriber: real spoken orders through Whisper base, through a real call to the LLM, and through an
OpenAI-compatible transcription endpoint (tests/fake_llm.py: the one paid remote service here) with its fallback."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import base_url
from tests.fake_llm import FakeLlm
from voicegate.asr.turns import TurnService, local_turn_engine
from voicegate.asr.whisper import WhisperAsr
from voicegate.audio.pcm import load_audio
from voicegate.bench.slots import SlotScore, SpokenRequest, load_barista
from voicegate.bench.turns import turn_audio
from voicegate.config import AgentOptions, AsrOptions, Options, TurnOptions
from voicegate.server.app import SESSIONS, create_app


def _orders(shared_data: Path, first: int, count: int) -> list[SpokenRequest]:
    return load_barista(shared_data / "speech/barista")[first:first + count]


def test_whisper_base_hears_more_of_what_users_ask_than_the_reflex(shared_data: Path) -> None:
    orders = _orders(shared_data, 0, 12)
    base, tiny = local_turn_engine(TurnOptions()), WhisperAsr(AsrOptions())
    base_score, tiny_score = SlotScore(), SlotScore()
    for order in orders:
        audio = turn_audio(load_audio(order.path, 16_000))
        base_score.add(order.slots, base.transcribe(audio).text)
        tiny_score.add(order.slots, tiny.transcribe(audio).text)
    assert base_score.values >= 40
    assert base_score.rate >= 0.8, base_score
    assert base_score.rate >= tiny_score.rate and base_score.word_error_rate <= tiny_score.word_error_rate


@pytest.fixture
async def transcriptions() -> AsyncIterator[FakeLlm]:
    """The local OpenAI-compatible server, here for its ``/v1/audio/transcriptions``."""
    fake = FakeLlm()
    await fake.start()
    yield fake
    await fake.close()


async def _result(service: TurnService, audio: np.ndarray) -> Any:
    job = service.submit(audio)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Any] = loop.create_future()
    job.then(lambda r: loop.call_soon_threadsafe(done.set_result, r))
    return await asyncio.wait_for(done, 60)


async def test_openai_endpoint_transcribes_turns_and_whisper_base_takes_over_when_it_fails(
        transcriptions: FakeLlm, shared_data: Path) -> None:
    order = _orders(shared_data, 0, 1)[0]
    audio = turn_audio(load_audio(order.path, 16_000))
    service = TurnService(TurnOptions(engine="openai", base_url=transcriptions.base_url, api_key="k",
                                      model="whisper-large-v3"))
    try:
        ok = await _result(service, audio)
        assert ok.engine == "openai:whisper-large-v3" and ok.error is None
        assert ok.transcript.text == transcriptions.transcript
        sent = transcriptions.transcriptions[-1]
        assert sent["model"] == "whisper-large-v3" and sent["language"] == "en" and sent["wav"]
        assert sent["bytes"] == 44 + 2 * len(audio)
        transcriptions.transcribe_status = 503
        failed = await _result(service, audio)
        assert failed.engine == "whisper-base" and failed.transcript is not None
        assert "503" in str(failed.error) or "overloaded" in str(failed.error)
        assert SlotScore().add(order.slots, failed.transcript.text) != list(order.slots.values()), \
            "the fallback transcribed the order itself"
    finally:
        service.close()


@dataclass
class TurnCaller:
    """A ``/ws`` caller that says each clip as its own turn and waits for the agent to get it."""

    url: str
    events: list[dict[str, Any]] = field(default_factory=list)

    async def say(self, clips: list[np.ndarray], turn_timeout_secs: float = 15.0) -> None:
        ws_url = self.url.replace("http://", "ws://")
        async with aiohttp.ClientSession() as http, http.ws_connect(f"{ws_url}/ws") as ws:
            await ws.send_str(json.dumps({"type": "start", "sample_rate": 16_000, "encoding": "pcm16"}))

            async def read() -> None:
                async for message in ws:
                    if message.type == aiohttp.WSMsgType.TEXT:
                        self.events.append(json.loads(message.data))

            reader = asyncio.ensure_future(read())
            silence = np.zeros(320, "<i2").tobytes()

            async def stream(pcm: np.ndarray) -> None:
                t0 = time.monotonic()
                for k in range(len(pcm) // 320):
                    await asyncio.sleep(max(0.0, t0 + (k + 1) / 50 - time.monotonic()))
                    await ws.send_bytes(pcm[k * 320:(k + 1) * 320].astype("<i2").tobytes())

            async def until(kind: str, count: int) -> None:
                deadline = time.monotonic() + turn_timeout_secs
                while sum(e["type"] == kind for e in self.events) < count:
                    assert time.monotonic() < deadline, f"no {kind} in time: {self.events[-5:]}"
                    await ws.send_bytes(silence)
                    await asyncio.sleep(0.02)

            await until("bot.done", 1)  # the greeting: the bot is quiet when the user speaks
            for i, pcm in enumerate(clips, 1):
                await stream(pcm)
                await until("user.turn", i)
                await until("bot.done", i + 1)  # the agent's short answer
            await ws.send_str(json.dumps({"type": "stop"}))
            await asyncio.wait_for(reader, 10)


async def test_the_llm_gets_the_turn_transcript_once_per_turn(shared_data: Path) -> None:
    llm = FakeLlm(reply="Okay.")
    await llm.start()
    options = Options(agent=AgentOptions(base_url=llm.base_url, api_key="k", model="m", greeting="Hi."))
    srv = TestServer(create_app(options), host="127.0.0.1")
    await srv.start_server()
    orders = _orders(shared_data, 20, 4)
    try:
        caller = TurnCaller(base_url(srv))
        await caller.say([load_audio(o.path, 16_000) for o in orders])
    finally:
        await srv.close()
        await llm.close()
    assert srv.app is not None and srv.app[SESSIONS] == {}
    turns = [e for e in caller.events if e["type"] == "user.turn"]
    asked = [r["messages"][-1]["content"] for r in llm.requests]
    assert [t["text"] for t in turns] == asked, "each turn reaches the LLM once, as the event says"
    assert len(turns) == len(orders)
    assert {t["engine"] for t in turns} == {"whisper-base"}
    assert any(t["speculative"] for t in turns), "the decode started when the silence began"
    score = SlotScore()
    for order, turn in zip(orders, turns, strict=True):
        score.add(order.slots, turn["text"])
    assert score.rate >= 0.7, (score, asked)
    assert sum(e["type"] == "asr.final" for e in caller.events) >= len(orders), "the reflex's finals stay"


async def test_a_failing_transcription_endpoint_is_reported_and_the_turn_still_arrives(
        transcriptions: FakeLlm, shared_data: Path) -> None:
    transcriptions.transcribe_status = 500
    llm = FakeLlm(reply="Okay.")
    await llm.start()
    options = Options(agent=AgentOptions(base_url=llm.base_url, api_key="k", model="m", greeting="Hi."),
                      turn=replace(TurnOptions(), engine="openai", base_url=transcriptions.base_url, api_key="k"))
    srv = TestServer(create_app(options), host="127.0.0.1")
    await srv.start_server()
    try:
        caller = TurnCaller(base_url(srv))
        await caller.say([load_audio(_orders(shared_data, 30, 1)[0].path, 16_000)])
    finally:
        await srv.close()
        await llm.close()
    errors = [e for e in caller.events if e["type"] == "error"]
    assert [e["stage"] for e in errors] == ["asr"] and "500" in errors[0]["message"]
    turn = next(e for e in caller.events if e["type"] == "user.turn")
    assert turn["engine"] == "whisper-base" and llm.requests[-1]["messages"][-1]["content"] == turn["text"]
    assert transcriptions.transcriptions, "the endpoint was asked first"
