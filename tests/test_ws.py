"""``GET /ws``: a call over a WebSocket with raw PCM or μ-law, against a real server, with a real aiohttp client."""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp.test_utils import TestServer

from voicegate.audio.pcm import load_audio, mulaw_decode, mulaw_encode, resample
from voicegate.config import Options, ServerOptions
from voicegate.server.app import SESSIONS, create_app
from voicegate.server.ws import AudioCodec

from .conftest import base_url, close_after


@dataclass
class WsCaller:
    """A WebSocket caller: streams a microphone in real time and records what comes back."""

    url: str
    rate: int = 16_000
    encoding: str = "pcm16"
    echo_delay_ms: float | None = None
    echo_gain: float = 0.0
    events: list[dict[str, Any]] = field(default_factory=list)
    frames: list[tuple[float, np.ndarray]] = field(default_factory=list)
    """(arrival time, samples at ``rate``) per binary message."""

    def decode(self, data: bytes) -> np.ndarray:
        return mulaw_decode(data) if self.encoding == "mulaw" else np.frombuffer(data, "<i2").astype(np.int16)

    def encode(self, pcm: np.ndarray) -> bytes:
        return mulaw_encode(pcm) if self.encoding == "mulaw" else pcm.astype("<i2").tobytes()

    async def call(self, mic: np.ndarray, stop_after_secs: float = 0.0) -> int | None:
        """Send ``start``, stream ``mic`` (at ``rate``) in 20 ms chunks in real time, then ``stop``."""
        frame = self.rate // 50
        async with aiohttp.ClientSession() as http, http.ws_connect(f"{self.url}/ws") as ws:
            await ws.send_str(json.dumps({"type": "start", "sample_rate": self.rate, "encoding": self.encoding}))

            async def read() -> None:
                async for message in ws:
                    if message.type == aiohttp.WSMsgType.BINARY:
                        self.frames.append((time.monotonic(), self.decode(message.data)))
                    elif message.type == aiohttp.WSMsgType.TEXT:
                        event = json.loads(message.data)
                        event["_received"] = time.monotonic()
                        self.events.append(event)

            reader = asyncio.ensure_future(read())
            t0 = time.monotonic()
            delay = int((self.echo_delay_ms or 0) * self.rate / 1000)
            for k in range(len(mic) // frame):
                chunk = mic[k * frame:(k + 1) * frame].astype(np.float32)
                if self.echo_delay_ms is not None:
                    heard = np.concatenate([f for _, f in self.frames]) if self.frames else np.zeros(0, np.int16)
                    start = k * frame - delay
                    if 0 <= start and start + frame <= len(heard):
                        chunk += self.echo_gain * heard[start:start + frame]
                await ws.send_bytes(self.encode(np.clip(chunk, -32768, 32767).astype(np.int16)))
                await asyncio.sleep(max(0.0, t0 + (k + 1) / 50 - time.monotonic()))
            await asyncio.sleep(stop_after_secs)
            await ws.send_str(json.dumps({"type": "stop"}))
            await asyncio.wait_for(reader, 5)
            return ws.close_code

    def first(self, kind: str) -> dict[str, Any] | None:
        return next((e for e in self.events if e["type"] == kind), None)


def _mic(clip16: np.ndarray, rate: int, lead_secs: float = 2.5, tail_secs: float = 2.5) -> np.ndarray:
    clip = resample(clip16, 16_000, rate) if rate != 16_000 else clip16
    return np.concatenate([np.zeros(int(lead_secs * rate), np.int16), clip, np.zeros(int(tail_secs * rate), np.int16)])


@pytest.mark.parametrize(("rate", "encoding"), [(8000, "mulaw"), (16_000, "pcm16"), (24_000, "pcm16"),
                                               (48_000, "pcm16")])
def test_codec_keeps_each_20ms_frame_in_its_own_frame(rate: int, encoding: str) -> None:
    """A resampler's held-back samples must not push each frame into the next one (20 ms more each way): every
    20 ms in gives 20 ms out from the first message, and a burst of sound stays in the frame it was sent in."""
    playout_rate = 24_000
    codec = AudioCodec(rate, encoding, playout_rate)
    burst_at = 5
    t = np.arange(playout_rate // 50) / playout_rate
    tone = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    out: list[np.ndarray] = []
    for k in range(10):
        frames = codec.encode(tone if k == burst_at else np.zeros_like(tone))
        assert len(frames) == 1, f"frame {k}: {len(frames)} frames out for one in"
        out.append(mulaw_decode(frames[0]) if encoding == "mulaw" else np.frombuffer(frames[0], "<i2"))
    energy = np.array([float(np.sum(np.square(f.astype(np.float64)))) for f in out])
    assert energy[burst_at] > 0.9 * energy.sum()

    codec = AudioCodec(rate, encoding, playout_rate)
    t_in = np.arange(rate // 50) / rate
    tone_in = (8000 * np.sin(2 * np.pi * 440 * t_in)).astype(np.int16)
    fed: list[np.ndarray] = []
    for k in range(10):
        pcm = tone_in if k == burst_at else np.zeros_like(tone_in)
        fed.append(codec.decode(mulaw_encode(pcm) if encoding == "mulaw" else pcm.astype("<i2").tobytes()))
        assert len(fed[-1]) == 320, f"message {k}: {len(fed[-1])} samples at 16 kHz for 20 ms in"
    energy = np.array([float(np.sum(np.square(f.astype(np.float64)))) for f in fed])
    assert energy[burst_at] > 0.9 * energy.sum()


async def test_ws_calls_pause_and_stop_on_spoken_stops(server: TestServer, shared_data: Path) -> None:
    """Three recordings of "stop", three concurrent calls: the protocol holds on every call, and the bot stops
    for most of them (a rate: transcripts differ between CPUs)."""
    stops = sorted((shared_data / "speech/speech_commands/stop").glob("*.wav"))
    callers = [WsCaller(base_url(server)) for _ in range(3)]
    codes = await asyncio.gather(*(c.call(_mic(load_audio(stops[i], 16_000), 16_000))
                                   for c, i in zip(callers, (2, 5, 7), strict=True)))
    assert codes == [1000] * 3, "{'type': 'stop'} ends each call normally"
    stopped_calls = 0
    for caller in callers:
        kinds = [e["type"] for e in caller.events]
        assert kinds[0] == "session.started" and kinds[-1] == "session.ended", kinds
        assert caller.first("session.started")["transport"] == "ws"  # type: ignore[index]
        assert {len(f) for _, f in caller.frames} == {320}, "every binary message is one 20 ms frame"
        onset = caller.first("user.speech_started")
        assert onset is not None and caller.first("bot.paused") is not None, "the bot pauses when the user speaks"
        levels = [(t, float(np.sqrt(np.mean(f.astype(np.float64) ** 2)))) for t, f in caller.frames]
        assert max(lvl for t, lvl in levels if t < onset["_received"]) > 300, "the bot's voice arrives"
        stopped = caller.first("bot.stopped")
        if stopped is None:
            continue
        stopped_calls += 1
        # After the stop nothing of the stopped reply is sent: silence until the next reply begins.
        next_reply = next((e["_received"] for e in caller.events
                           if e["type"] == "bot.speaking" and e["_received"] > stopped["_received"]), float("inf"))
        after = [lvl for t, lvl in levels if stopped["_received"] + 0.06 < t < next_reply]
        assert after and max(after) < 50, "nothing of the stopped reply is sent after the stop"
    assert stopped_calls >= 2, f"only {stopped_calls} of 3 spoken stops stopped the bot"
    await asyncio.sleep(0.2)
    assert server.app is not None and not server.app[SESSIONS]


@pytest.mark.parametrize("delay_ms", [60.0, 120.0, 200.0])
async def test_ws_mulaw_8k_phone_line_with_echo_does_not_stop_itself(server: TestServer, delay_ms: float) -> None:
    """A phone line has no echo cancellation: the bot's own voice comes back (8 kHz μ-law) 60–200 ms later."""
    caller = WsCaller(base_url(server), rate=8000, encoding="mulaw", echo_delay_ms=delay_ms, echo_gain=0.5)
    await caller.call(np.zeros(8000 * 8, np.int16))
    assert {len(f) for _, f in caller.frames} == {160}
    assert caller.first("bot.speaking") is not None
    assert caller.first("bot.stopped") is None, [e for e in caller.events if e["type"] == "gate.verdict"]
    assert max(float(np.abs(f).max()) for _, f in caller.frames) > 1000, "the bot was audible all along"


BAD_FIRST_MESSAGES: list[tuple[str, Any, int, str]] = [
    ("not json", "hello", 1007, "must be JSON"),
    ("json array", "[1, 2]", 1007, "JSON object"),
    ("wrong type", json.dumps({"type": "media"}), 1008, "first message must be"),
    ("rate not int", json.dumps({"type": "start", "sample_rate": "8000", "encoding": "pcm16"}), 1007, "integer"),
    ("rate unsupported", json.dumps({"type": "start", "sample_rate": 44100, "encoding": "pcm16"}), 1003,
     "unsupported"),
    ("encoding unsupported", json.dumps({"type": "start", "sample_rate": 16000, "encoding": "opus"}), 1003,
     "unsupported"),
    ("audio first", b"\x00\x01" * 160, 1008, "before the start"),
]
START = json.dumps({"type": "start", "sample_rate": 16000, "encoding": "pcm16"})
BAD_LATER_MESSAGES: list[tuple[str, Any, int, str]] = [
    ("odd pcm16 length", b"\x00" * 321, 1007, "whole 2-byte samples"),
    ("second start", START, 1008, "already started"),
    ("unknown type", json.dumps({"type": "mark"}), 1008, "unknown message type"),
    ("text not json", "stop", 1007, "must be JSON"),
    ("too large", b"\x00" * (300 * 1024), 1009, ""),
]


async def test_ws_bad_input_closes_that_socket_with_a_code_and_reason(server: TestServer,
                                                                     shared_data: Path) -> None:
    url = base_url(server)
    yeses = sorted((shared_data / "speech/speech_commands/yes").glob("*.wav"))
    good = WsCaller(url)
    mic = _mic(load_audio(yeses[6], 16_000), 16_000, tail_secs=4.0)
    good_call = asyncio.ensure_future(good.call(mic))
    cases = [(name, [m], code, why) for name, m, code, why in BAD_FIRST_MESSAGES] + \
        [(name, [START, m], code, why) for name, m, code, why in BAD_LATER_MESSAGES]
    for name, messages, expected, why in cases:
        code, reason = await close_after(f"{url}/ws", messages)
        assert code == expected, (name, code, reason)
        assert why in reason, (name, reason)
    assert len(cases) >= 12
    assert await good_call == 1000, "a call running beside the bad sockets is untouched"
    assert good.first("gate.verdict") is not None and len(good.frames) > 200, "…it heard its user and kept talking"
    await asyncio.sleep(0.3)
    assert server.app is not None and not server.app[SESSIONS]
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as res:
        text = await res.text()
    assert 'voicegate_calls_total{transport="ws"}' in text and 'voicegate_ws_closed_total{code="1007"}' in text
    lagged = re.search(r"^voicegate_detector_lag_seconds_count ([0-9.e+]+)$", text, re.M)
    assert lagged and 10 <= float(lagged.group(1)) <= 2 * len(mic) // 320, \
        "every chunk that could start speech is timed from its arrival to its windows (the user said 'yes')"


async def test_ws_guards_before_the_upgrade(shared_data: Path) -> None:
    options = Options(server=ServerOptions(max_sessions=1, token="sekrit"))
    srv = TestServer(create_app(options), host="127.0.0.1")
    await srv.start_server()
    url = base_url(srv)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/ws") as res:
                assert res.status == 401 and "token" in (await res.json())["error"]
            async with http.get(f"{url}/ws?token=sekrit") as res:
                assert res.status == 426, "a plain GET with the token is told to upgrade"
            async with http.ws_connect(f"{url}/ws?token=sekrit") as first:
                await first.send_str(START)
                await asyncio.sleep(0.5)
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await http.ws_connect(f"{url}/ws", headers={"Authorization": "Bearer sekrit"})
                assert refused.value.status == 503, "capacity is checked before the upgrade"
                await first.send_str(json.dumps({"type": "stop"}))
                async for _ in first:
                    pass
    finally:
        await srv.close()
