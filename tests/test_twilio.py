"""``GET /twilio``: Twilio Media Streams, driven by a local client that speaks the documented protocol.

The client behaves like Twilio's side: it sends ``connected``, ``start``, ``media`` (base64 μ-law 8 kHz, 20 ms, in
real time) and ``stop``; it plays what it receives through a 100 ms buffer at real time, returns each ``mark``
when the audio before it has been played, and on ``clear`` empties its buffer and returns the pending marks.
Every message the server sends is checked field by field. No network service is involved.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from aiohttp.test_utils import TestServer

from voicegate.audio.pcm import load_audio, mulaw_decode, mulaw_encode, resample
from voicegate.config import Options, ServerOptions
from voicegate.server.app import SESSION_HOOK, SESSIONS, create_app
from voicegate.server.twilio import TwilioCall

from .conftest import base_url, close_after

SID = "MZ00000000000000000000000000000001"


def start_message(sid: str = SID, **custom: str) -> str:
    return json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": sid,
                       "start": {"accountSid": "AC0", "streamSid": sid, "callSid": "CA0", "tracks": ["inbound"],
                                 "customParameters": custom,
                                 "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})


@dataclass
class FakeTwilio:
    url: str
    sid: str = SID
    buffer_ms: float = 100.0
    received: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    played: list[np.ndarray] = field(default_factory=list)
    cleared_ms: list[float] = field(default_factory=list)
    """How much buffered audio each clear dropped."""

    def check(self, message: dict[str, Any]) -> None:
        """The documented shapes of what a Media Streams server may send."""
        kind = message["event"]
        assert message["streamSid"] == self.sid
        if kind == "media":
            assert set(message) == {"event", "streamSid", "media"} and set(message["media"]) == {"payload"}
            assert len(base64.b64decode(message["media"]["payload"])) == 160, "20 ms of 8 kHz μ-law"
        elif kind == "mark":
            assert set(message) == {"event", "streamSid", "mark"} and set(message["mark"]) == {"name"}
            assert isinstance(message["mark"]["name"], str)
        else:
            assert kind == "clear" and set(message) == {"event", "streamSid"}, message

    async def call(self, mic8k: np.ndarray, custom: dict[str, str] | None = None) -> int | None:
        async with aiohttp.ClientSession() as http, http.ws_connect(f"{self.url}/twilio") as ws:
            await ws.send_str(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            await ws.send_str(start_message(self.sid, **(custom or {})))
            queue: list[tuple[str, Any]] = []  # ("audio", pcm) or ("mark", name), in arrival order
            sequence = 2

            async def send(message: dict[str, Any]) -> None:
                nonlocal sequence
                sequence += 1
                await ws.send_str(json.dumps({**message, "sequenceNumber": str(sequence), "streamSid": self.sid}))

            async def read() -> None:
                async for raw in ws:
                    if raw.type != aiohttp.WSMsgType.TEXT:
                        continue
                    message = json.loads(raw.data)
                    self.check(message)
                    self.received.append((time.monotonic(), message))
                    if message["event"] == "media":
                        queue.append(("audio", mulaw_decode(base64.b64decode(message["media"]["payload"]))))
                    elif message["event"] == "mark":
                        queue.append(("mark", message["mark"]["name"]))
                    else:  # clear: drop the buffered audio, return every pending mark
                        self.cleared_ms.append(20.0 * sum(kind == "audio" for kind, _ in queue))
                        marks = [name for kind, name in queue if kind == "mark"]
                        queue.clear()
                        for name in marks:
                            await send({"event": "mark", "mark": {"name": name}})

            async def play() -> None:
                """The phone: once 100 ms are buffered, 20 ms played every 20 ms; marks returned as reached."""
                started = False
                while True:
                    await asyncio.sleep(0.02)
                    buffered = 20.0 * sum(kind == "audio" for kind, _ in queue)
                    started = (started and bool(queue)) or buffered >= self.buffer_ms
                    while started and queue and queue[0][0] == "mark":
                        await send({"event": "mark", "mark": {"name": queue.pop(0)[1]}})
                    if started and queue:
                        self.played.append(queue.pop(0)[1])

            reader, player = asyncio.ensure_future(read()), asyncio.ensure_future(play())
            t0 = time.monotonic()
            for k in range(len(mic8k) // 160):
                payload = base64.b64encode(mulaw_encode(mic8k[k * 160:(k + 1) * 160])).decode()
                await send({"event": "media", "media": {"track": "inbound", "chunk": str(k + 1),
                                                        "timestamp": str(20 * k), "payload": payload}})
                await asyncio.sleep(max(0.0, t0 + (k + 1) / 50 - time.monotonic()))
            await send({"event": "stop", "stop": {"accountSid": "AC0", "callSid": "CA0"}})
            await asyncio.wait_for(reader, 5)
            player.cancel()
            return ws.close_code


def _capture(server: TestServer) -> list[tuple[float, dict[str, Any], TwilioCall]]:
    seen: list[tuple[float, dict[str, Any], TwilioCall]] = []

    def hook(call: object) -> None:
        if isinstance(call, TwilioCall):
            call.events.add_listener(lambda e: seen.append((time.monotonic(), e, call)))

    assert server.app is not None
    server.app[SESSION_HOOK].append(hook)
    return seen


def _mic(clip16: np.ndarray, lead_secs: float = 2.5, tail_secs: float = 3.5) -> np.ndarray:
    clip = resample(clip16, 16_000, 8000)
    return np.concatenate([np.zeros(int(lead_secs * 8000), np.int16), clip, np.zeros(int(tail_secs * 8000), np.int16)])


async def _three_calls(server: TestServer, clips: list[np.ndarray]
                       ) -> list[tuple[FakeTwilio, list[tuple[float, dict[str, Any]]], TwilioCall]]:
    """One phone per clip, all at once; each with the server-side events of its own call."""
    seen = _capture(server)
    phones = [FakeTwilio(base_url(server), sid=f"MZ{i:032d}") for i in range(len(clips))]
    codes = await asyncio.gather(*(p.call(_mic(c)) for p, c in zip(phones, clips, strict=True)))
    assert codes == [1000] * len(clips), "Twilio's stop ends each stream normally"
    out = []
    for phone in phones:
        call = next(c for _, _, c in seen if c.stream_sid == phone.sid)
        out.append((phone, [(t, e) for t, e, c in seen if c is call], call))
    return out


async def test_twilio_stop_clears_the_phone_buffer_and_sends_nothing_of_the_stopped_reply(
        server: TestServer, shared_data: Path) -> None:
    stops = sorted((shared_data / "speech/speech_commands/stop").glob("*.wav"))
    calls = await _three_calls(server, [load_audio(stops[i], 16_000) for i in (2, 5, 7)])
    stopped_calls, prompt_clears = 0, 0
    for phone, events, _ in calls:
        kinds = [e["type"] for _, e in events]
        assert any(m["event"] == "mark" and m["mark"]["name"].startswith("pos:") for _, m in phone.received)
        assert any(m["event"] == "mark" and m["mark"]["name"].startswith("sentence:") for _, m in phone.received)
        if "user.speech_started" in kinds and "bot.paused" in kinds:
            onset = next(t for t, e in events if e["type"] == "user.speech_started")
            clears = [t for t, m in phone.received if m["event"] == "clear"]
            assert clears, "a pause clears what the phone buffered"
            prompt_clears += clears[0] - onset <= 0.06
        if "bot.stopped" not in kinds:
            continue
        stopped_calls += 1
        stopped = next(t for t, e in events if e["type"] == "bot.stopped")
        next_reply = next((t for t, e in events if e["type"] == "bot.speaking" and t > stopped), float("inf"))
        late = [m for t, m in phone.received if m["event"] == "media" and stopped + 0.03 < t < next_reply]
        assert not late, f"{len(late)} frames of the stopped reply were sent after the stop"
    assert stopped_calls >= 2, f"only {stopped_calls} of 3 spoken stops stopped the bot"
    assert prompt_clears >= 2, "clear goes out within 60 ms of the VAD onset"
    await asyncio.sleep(0.2)
    assert server.app is not None and not server.app[SESSIONS]


async def test_twilio_backchannel_pauses_then_resumes_from_what_the_caller_heard(
        server: TestServer, shared_data: Path) -> None:
    yeses = sorted((shared_data / "speech/speech_commands/yes").glob("*.wav"))
    calls = await _three_calls(server, [load_audio(yeses[i], 16_000) for i in (2, 4, 6)])
    resumed_calls, dropped = 0, 0.0
    for phone, events, call in calls:
        kinds = [e["type"] for _, e in events]
        if "bot.paused" not in kinds or "bot.resumed" not in kinds or "bot.stopped" in kinds:
            continue
        resumed_calls += 1
        assert phone.cleared_ms, "the pause sent a clear"
        assert call.rewinds_ms and 0 <= call.rewinds_ms[0] <= 1000
        assert call.rewinds_ms[0] >= phone.cleared_ms[0], "the resume re-sends at least what the clear dropped"
        dropped += phone.cleared_ms[0]
        resumed = next(t for t, e in events if e["type"] == "bot.resumed")
        assert any(m["event"] == "media" for t, m in phone.received if t > resumed), "the bot carries on"
    assert resumed_calls >= 2, f"only {resumed_calls} of 3 spoken yeses paused and resumed the bot"
    assert dropped > 0, "in at least one call the phone had audio buffered when the pause came (a pause in a gap "\
        "between the bot's sentences finds the buffer empty)"


BAD: list[tuple[str, list[Any], int, str]] = [
    ("binary", [b"\x00\x01"], 1003, "text (JSON)"),
    ("not json", ["hello"], 1007, "JSON"),
    ("no event", [json.dumps({"foo": 1})], 1007, '"event"'),
    ("media before start", [json.dumps({"event": "media", "media": {"payload": ""}})], 1008, "before start"),
    ("start without sid", [json.dumps({"event": "start", "start": {"mediaFormat": {}}})], 1007, "streamSid"),
    ("wrong format", [json.dumps({"event": "start", "streamSid": SID, "start": {
        "mediaFormat": {"encoding": "audio/l16", "sampleRate": 16000, "channels": 1}}})], 1003, "unsupported"),
    ("bad base64", [start_message(), json.dumps({"event": "media", "streamSid": SID,
                                                 "media": {"payload": "@@not base64@@"}})], 1007, "base64"),
    ("payload not string", [start_message(), json.dumps({"event": "media", "media": {"payload": 5}})], 1007,
     "base64 string"),
    ("unknown event", [start_message(), json.dumps({"event": "hangup"})], 1008, "unknown"),
    ("second start", [start_message(), start_message()], 1008, "again"),
    ("mark without name", [start_message(), json.dumps({"event": "mark", "mark": {}})], 1007, "mark.name"),
]


async def test_twilio_bad_messages_close_that_stream_with_a_code_and_reason(server: TestServer) -> None:
    url = base_url(server)
    for name, messages, expected, why in BAD:
        code, reason = await close_after(f"{url}/twilio", messages)
        assert code == expected and why in reason, (name, code, reason)
    await asyncio.sleep(0.3)
    assert server.app is not None and not server.app[SESSIONS]


async def test_twilio_token_rides_in_the_start_parameters() -> None:
    srv = TestServer(create_app(Options(server=ServerOptions(token="sekrit"))), host="127.0.0.1")
    await srv.start_server()
    try:
        url = base_url(srv)
        code, reason = await close_after(f"{url}/twilio", [start_message()])
        assert code == 1008 and "token" in reason
        code, reason = await close_after(f"{url}/twilio", [start_message(token="wrong")])
        assert code == 1008 and "token" in reason
        phone = FakeTwilio(url)
        assert await phone.call(np.zeros(8000 * 2, np.int16), custom={"token": "sekrit"}) == 1000
        async with aiohttp.ClientSession() as http, http.get(f"{url}/twilio?token=wrong") as res:
            assert res.status == 401, "a wrong token in the URL is refused before the upgrade"
    finally:
        await srv.close()
