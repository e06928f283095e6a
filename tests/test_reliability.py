"""Limits, auth, CORS, capacity, metrics, lifecycle and fault isolation of the media server."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import base_url
from voicegate.asr.scheduler import AsrService
from voicegate.audio.pcm import resample
from voicegate.client import Caller, ClipTrack
from voicegate.config import Options, ServerOptions
from voicegate.server.app import SESSIONS, create_app
from voicegate.tts.espeak import EspeakTts

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
async def make_server() -> AsyncIterator[Callable[..., object]]:
    servers: list[TestServer] = []

    async def make(**server_kw: object) -> TestServer:
        options = Options(server=replace(ServerOptions(), **server_kw))  # type: ignore[arg-type]
        srv = TestServer(create_app(options), host="127.0.0.1")
        await srv.start_server()
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        await srv.close()
        assert srv.app is not None and srv.app[SESSIONS] == {}


async def _until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def _offer_sdp() -> tuple[object, str]:
    from aiortc import RTCPeerConnection

    pc = RTCPeerConnection()
    pc.addTransceiver("audio")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


async def test_capacity_gives_503_with_retry_after_and_frees_up(make_server) -> None:  # type: ignore[no-untyped-def]
    srv = await make_server(max_sessions=1)
    first = Caller(base_url(srv))
    await first.connect()
    await first.wait_event("session.started")
    try:
        pc, sdp = await _offer_sdp()
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base_url(srv)}/offer", json={"sdp": sdp, "type": "offer"}) as res:
                assert res.status == 503 and res.headers["Retry-After"] == "5"
                assert "at capacity" in (await res.json())["error"]
        await pc.close()  # type: ignore[attr-defined]
    finally:
        await first.close()
    await _until(lambda: not srv.app[SESSIONS])
    again = Caller(base_url(srv))
    await again.connect()
    await again.close()


async def test_token_guards_offer_and_metrics_but_not_healthz(make_server) -> None:  # type: ignore[no-untyped-def]
    srv = await make_server(token="s3cret")
    url = base_url(srv)
    pc, sdp = await _offer_sdp()
    async with aiohttp.ClientSession() as http:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "s3cret"}):
            async with http.post(f"{url}/offer", json={"sdp": sdp, "type": "offer"}, headers=headers) as res:
                assert res.status == 401 and "bearer token" in (await res.json())["error"]
        async with http.get(f"{url}/metrics") as res:
            assert res.status == 401
        async with http.get(f"{url}/healthz") as res:
            assert res.status == 200
        async with http.get(f"{url}/metrics", headers={"Authorization": "Bearer s3cret"}) as res:
            text = await res.text()
            assert res.status == 200 and 'voicegate_offers_total{outcome="unauthorized"} 3.0' in text
        async with http.post(f"{url}/offer", json={"sdp": sdp, "type": "offer"},
                             headers={"Authorization": "Bearer s3cret"}) as res:
            assert res.status == 200
    await pc.close()  # type: ignore[attr-defined]
    await _until(lambda: True)


async def test_unsupported_type_rate_limit_and_cors(make_server) -> None:  # type: ignore[no-untyped-def]
    srv = await make_server(offers_per_minute=2, cors_origins=("https://app.example",))
    url = base_url(srv)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/offer", data="<sdp/>", headers={"Content-Type": "text/xml"}) as res:
            assert res.status == 415
        async with http.options(f"{url}/offer", headers={"Origin": "https://app.example",
                                                         "Access-Control-Request-Method": "POST"}) as res:
            assert res.status == 204 and res.headers["Access-Control-Allow-Origin"] == "https://app.example"
        async with http.options(f"{url}/offer", headers={"Origin": "https://evil.example",
                                                         "Access-Control-Request-Method": "POST"}) as res:
            assert "Access-Control-Allow-Origin" not in res.headers
        statuses = []
        for _ in range(3):
            async with http.post(f"{url}/offer", json={"sdp": "x", "type": "offer"}) as res:
                statuses.append(res.status)
                last = res
        assert statuses == [400, 400, 429] and last.headers["Retry-After"] == "10"


async def test_metrics_after_a_call(make_server) -> None:  # type: ignore[no-untyped-def]
    srv = await make_server()
    caller = Caller(base_url(srv))
    await caller.connect()
    try:
        await caller.wait_event("bot.speaking")
        async with aiohttp.ClientSession() as http, http.get(f"{base_url(srv)}/metrics") as res:
            text = await res.text()
        assert "voicegate_active_sessions 1.0" in text
        assert 'voicegate_offers_total{outcome="answered"} 1.0' in text
        assert "voicegate_time_to_pause_seconds_bucket" in text and "process_resident_memory_bytes" in text
        assert "voicegate_tts_seconds_count" in text
    finally:
        await caller.close()
    await _until(lambda: not srv.app[SESSIONS])


async def test_a_client_that_never_connects_is_forgotten(make_server) -> None:  # type: ignore[no-untyped-def]
    srv = await make_server(connect_timeout_secs=1.0)
    pc, sdp = await _offer_sdp()
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base_url(srv)}/offer", json={"sdp": sdp, "type": "offer"}) as res:
            assert res.status == 200  # …and the client never applies the answer
    assert len(srv.app[SESSIONS]) == 1
    await _until(lambda: not srv.app[SESSIONS], timeout=6)
    await pc.close()  # type: ignore[attr-defined]


async def test_silent_client_is_closed_and_released(make_server) -> None:  # type: ignore[no-untyped-def]
    srv = await make_server(silent_timeout_secs=1.5)
    caller = Caller(base_url(srv))
    await caller.connect()
    try:
        await caller.wait_event("session.started")
        caller.mic.stop()  # the client's microphone goes away; its connection stays open
        await _until(lambda: not srv.app[SESSIONS], timeout=8)
        ended = await caller.wait_event("session.ended", timeout=2)
        assert ended["reason"] == "silent_client"
    finally:
        await caller.close()


class _BrokenAsr:
    name = "broken"

    def transcribe(self, pcm: np.ndarray) -> object:
        raise RuntimeError("injected ASR fault")


async def test_faults_in_one_call_leave_the_server_and_other_calls_alone(make_server) -> None:  # type: ignore[no-untyped-def]
    srv = await make_server()
    a, b = Caller(base_url(srv), ClipTrack()), Caller(base_url(srv), ClipTrack())
    broken = AsrService(_BrokenAsr(), workers=1, max_wait_ms=1000)  # type: ignore[arg-type]
    await a.connect()
    await b.connect()
    try:
        await a.wait_event("bot.speaking")
        await b.wait_event("bot.speaking")
        sessions = srv.app[SESSIONS]
        sa, sb = sessions[a.call_id], sessions[b.call_id]
        assert sa.driver is not None and sb.driver is not None
        sa.driver.service = broken
        speech = await EspeakTts(sample_rate=16_000).synthesize("okay")
        a.mic.schedule(resample(speech.pcm, 16_000, 48_000), 0.0)
        error = await a.wait_event("error", timeout=10)
        assert error["stage"] == "asr" and "injected" in error["message"]
        await a.wait_event("bot.resumed", timeout=10)  # a short sound without a transcript: never left paused
        # A VAD fault: barge-in is switched off for that call only, and the call goes on.
        sb.driver.models.vad.vad = None  # type: ignore[assignment]
        b.mic.schedule(resample(speech.pcm, 16_000, 48_000), 0.0)
        await _until(lambda: any(e["type"] == "error" and e["stage"] == "gate" for e in b.events))
        frames = len(b.bot_frames)
        await asyncio.sleep(0.6)
        assert len(b.bot_frames) > frames + 20 and b.bot_rms(last_frames=20) > 100, "call B still talks"
        assert a.bot_rms(last_frames=20) > 100, "call A still talks"
        async with aiohttp.ClientSession() as http, http.get(f"{base_url(srv)}/healthz") as res:
            assert (await res.json())["sessions"] == 2
    finally:
        broken.close()
        await a.close()
        await b.close()
    await _until(lambda: not srv.app[SESSIONS])


def test_serve_refuses_a_public_host_without_a_token() -> None:
    proc = subprocess.run([sys.executable, "-m", "voicegate", "serve", "--host", "0.0.0.0", "--port", "8099"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})
    assert proc.returncode == 2
    assert "VOICEGATE_TOKEN" in proc.stderr and "--insecure" in proc.stderr
