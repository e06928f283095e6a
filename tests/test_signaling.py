"""Every bad input to the HTTP API gets a precise JSON 4xx, and the server keeps serving."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from aiortc import RTCPeerConnection

from tests.conftest import base_url


async def _video_only_offer() -> str:
    pc = RTCPeerConnection()
    pc.addTransceiver("video")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


@pytest.mark.parametrize(
    ("body", "content_type", "status", "fragment"),
    [
        (b"{not json", "application/json", 400, "not valid JSON"),
        (b"[1, 2]", "application/json", 400, "JSON object"),
        (b'{"type": "offer"}', "application/json", 400, "missing field(s): sdp"),
        (b'{"sdp": "v=0"}', "application/json", 400, "missing field(s): type"),
        (b'{"sdp": "v=0\\r\\n", "type": "answer"}', "application/json", 400, "type must be 'offer'"),
        (b'{"sdp": 42, "type": "offer"}', "application/json", 400, "must be strings"),
        (b'{"sdp": "hello", "type": "offer"}', "application/json", 400, "SDP does not parse"),
        (b'{"sdp": "v=0\\r\\n", "type": "offer"}', "application/json", 400, "SDP does not parse"),
        (b"sdp=x", "application/x-www-form-urlencoded", 415, "unsupported content type"),
    ],
)
async def test_bad_offer_bodies(server: TestServer, body: bytes, content_type: str, status: int,
                                fragment: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base_url(server)}/offer", data=body, headers={"Content-Type": content_type}) as res:
            assert res.status == status
            assert res.content_type == "application/json"
            assert fragment in (await res.json())["error"]
        async with http.get(f"{base_url(server)}/healthz") as res:
            health = await res.json()
            assert isinstance(health.pop("warming"), bool)  # the models may still be loading in this process
            assert health == {"status": "ok", "sessions": 0, "max_sessions": 4, "full": False}


async def test_offer_without_audio_is_refused(server: TestServer) -> None:
    sdp = await _video_only_offer()
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base_url(server)}/offer", json={"sdp": sdp, "type": "offer"}) as res:
            assert res.status == 400
            assert "no audio m-line" in (await res.json())["error"]


async def test_oversized_body_is_413(server: TestServer) -> None:
    async with aiohttp.ClientSession() as http:
        big = b'{"sdp": "' + b"a" * 200_000 + b'", "type": "offer"}'
        async with http.post(f"{base_url(server)}/offer", data=big,
                             headers={"Content-Type": "application/json"}) as res:
            assert res.status == 413
            assert "too large" in (await res.json())["error"]


async def test_unknown_route_and_wrong_method_are_json(server: TestServer) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base_url(server)}/nope") as res:
            assert res.status == 404
            assert (await res.json())["error"] == "no route /nope"
        async with http.get(f"{base_url(server)}/offer") as res:
            assert res.status == 405
            assert "not allowed" in (await res.json())["error"]
            assert "POST" in res.headers["Allow"]


async def test_demo_page_and_client_module_are_served(server: TestServer) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base_url(server)}/") as res:
            assert res.status == 200
            assert "voicegate" in await res.text()
        async with http.get(f"{base_url(server)}/static/voicegate.js") as res:
            assert res.status == 200
            assert "export async function connect" in await res.text()
