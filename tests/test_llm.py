"""The brain: a streaming LLM behind the gate, against a real local OpenAI-compatible HTTP server."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from tests.fake_llm import FakeLlm
from voicegate.agent.base import ReplyRunner
from voicegate.agent.llm import APOLOGY, LlmAgent
from voicegate.config import AgentOptions, PlayoutOptions
from voicegate.events import EventBus, MediaClock
from voicegate.gate.controller import DuplexController
from voicegate.media.playout import PlayoutTrack
from voicegate.tasks import TaskOwner
from voicegate.tts.espeak import EspeakTts
from voicegate.tts.openai_tts import FallbackTts, OpenAiTts


@dataclass
class Rig:
    llm: FakeLlm
    agent: LlmAgent
    controller: DuplexController
    playout: PlayoutTrack
    events: EventBus
    tasks: TaskOwner
    frames: list[tuple[float, bool]]

    def of_type(self, type_: str) -> list[dict[str, Any]]:
        return [e for e in self.events.history if e["type"] == type_]

    async def wait(self, predicate: Any, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, "condition not met in time"
            await asyncio.sleep(0.02)


@pytest.fixture
async def fake_llm() -> AsyncIterator[FakeLlm]:
    llm = FakeLlm()
    await llm.start()
    yield llm
    await llm.close()


async def _rig(llm: FakeLlm, **agent_kw: Any) -> Rig:
    clock = MediaClock()
    events = EventBus(clock, "test", backlog=2048)
    tasks = TaskOwner("call-test")
    playout = PlayoutTrack(PlayoutOptions())
    controller = DuplexController(playout, EspeakTts(), events)
    runner = ReplyRunner(controller, tasks)
    options = AgentOptions(base_url=agent_kw.pop("base_url", llm.base_url), api_key="test-key", model="test-model",
                           **agent_kw)
    agent = LlmAgent(runner, events, options)
    frames: list[tuple[float, bool]] = []

    async def pump() -> None:
        while True:
            frame = await playout.recv()
            frames.append((time.monotonic(), bool(frame.to_ndarray().any())))

    tasks.spawn(pump(), "pump")
    return Rig(llm, agent, controller, playout, events, tasks, frames)


async def _close(rig: Rig) -> None:
    rig.agent.cancel()
    rig.playout.stop()
    await rig.tasks.aclose()
    await rig.agent.aclose()


async def test_reply_is_streamed_and_spoken_clause_by_clause(fake_llm: FakeLlm) -> None:
    fake_llm.reply = "Paris is the capital of France, and it is lovely in spring. Anything else?"
    fake_llm.token_delay_s = 0.05
    rig = await _rig(fake_llm)
    try:
        rig.agent.user_turn("what is the capital of France")
        await rig.wait(lambda: rig.of_type("bot.speaking"))
        request = fake_llm.requests[0]
        assert request["stream"] is True and request["model"] == "test-model"
        assert request["messages"][0]["role"] == "system"
        assert request["messages"][-1] == {"role": "user", "content": "what is the capital of France"}
        first = rig.of_type("bot.speaking")[0]
        assert first["text"] == "Paris is the capital of France,", "the first clause is spoken before the rest arrives"
        assert 0 < first["since_user_turn_ms"] < 2000
        assert fake_llm.streams_completed == 0, "audio started while the answer was still streaming"
        await rig.wait(lambda: rig.agent.runner.history[-1]["role"] == "assistant", timeout=20)
        assert rig.agent.runner.history[-1] == {"role": "assistant", "content": fake_llm.reply}
    finally:
        await _close(rig)


async def test_stop_cancels_the_stream_and_history_keeps_only_what_was_heard(fake_llm: FakeLlm) -> None:
    fake_llm.reply = " ".join(f"This is sentence number {i} of a long answer about London." for i in range(30))
    fake_llm.token_delay_s = 0.03
    rig = await _rig(fake_llm)
    try:
        rig.agent.user_turn("tell me about London")
        await rig.wait(lambda: rig.of_type("bot.speaking"))
        await asyncio.sleep(2.5)
        assert rig.controller.stop(reason="test")
        t_stop = time.monotonic()
        await rig.wait(lambda: fake_llm.disconnects == 1, timeout=3)
        assert fake_llm.streams_completed == 0
        await asyncio.sleep(0.5)
        after = [audible for t, audible in rig.frames if t > t_stop + 0.05]
        assert after and not any(after), "no audio from the cancelled reply plays after the stop"
        heard = rig.agent.runner.history[-1]
        assert heard["role"] == "assistant" and heard.get("interrupted") is True
        assert 10 < len(heard["content"]) < len(fake_llm.reply) / 3  # type: ignore[arg-type]
        assert fake_llm.reply.startswith(heard["content"])  # type: ignore[arg-type]
        fake_llm.reply = "Sure."
        rig.controller.end_user_turn()
        rig.agent.user_turn("what about Paris")
        await rig.wait(lambda: len(fake_llm.requests) == 2)
        messages = fake_llm.requests[1]["messages"]
        assert messages[-2] == {"role": "assistant", "content": heard["content"]}
        assert messages[-1] == {"role": "user", "content": "what about Paris"}
        assert [t.get_name() for t in rig.tasks.tasks if "reply-r1" in t.get_name()] == []
    finally:
        await _close(rig)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("failure", ["http_401", "timeout", "stream_broken", "unreachable"])
async def test_llm_failures_are_apologised_for_and_the_call_survives(fake_llm: FakeLlm, failure: str) -> None:
    kw: dict[str, Any] = {}
    if failure == "http_401":
        fake_llm.status = 401
    elif failure == "timeout":
        fake_llm.first_token_delay_s = 3.0
        kw["first_token_timeout_secs"] = 0.5
    elif failure == "stream_broken":
        fake_llm.reply = "One. Two three four five six seven."
        fake_llm.break_after_tokens = 3
    else:
        kw["base_url"] = f"http://127.0.0.1:{_closed_port()}/v1"
    rig = await _rig(fake_llm, **kw)
    try:
        rig.agent.user_turn("hello there")
        await rig.wait(lambda: rig.of_type("error"), timeout=10)
        error = rig.of_type("error")[0]
        assert error["stage"] == "llm" and error["cause"] == failure, error
        await rig.wait(lambda: any(e["text"] == APOLOGY for e in rig.of_type("bot.speaking")))
        await asyncio.sleep(0.3)
        assert any(audible for _, audible in rig.frames[-10:]), "the apology is audible"
        if failure != "unreachable":
            fake_llm.status, fake_llm.first_token_delay_s, fake_llm.break_after_tokens = 200, 0.0, None
            fake_llm.reply = "All good now."
            rig.controller.stop()
            rig.controller.end_user_turn()
            rig.agent.user_turn("again")
            await rig.wait(lambda: any(e["text"] == "All good now." for e in rig.of_type("bot.speaking")))
    finally:
        await _close(rig)


async def test_openai_tts_speaks_and_falls_back_to_espeak_with_an_apology(fake_llm: FakeLlm) -> None:
    import openai

    client = openai.AsyncOpenAI(api_key="k", base_url=fake_llm.base_url, max_retries=0)
    tts = OpenAiTts(client)
    speech = await tts.synthesize("Hello there.")
    assert speech.sample_rate == 24_000 and len(speech.pcm) == 12_000 and np.abs(speech.pcm).max() > 7000
    assert fake_llm.requests[-1]["response_format"] == "pcm"
    errors: list[Exception] = []
    fake_llm.tts_status = 500
    wrapped = FallbackTts(tts, EspeakTts(), errors.append)
    speech = await wrapped.synthesize("Hello there.")
    assert errors and speech.text == "Sorry, my voice glitched. Hello there."
    assert len(speech.pcm) > 24_000, "espeak-ng said the apology and the sentence"
    await client.close()
