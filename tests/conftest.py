from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from voicegate.config import Options
from voicegate.server.app import SESSIONS, create_app

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent (the project's shared recordings live beside the repo)")
    return SHARED_DATA


@pytest.fixture
async def server() -> AsyncIterator[TestServer]:
    """A real voicegate HTTP server on a free loopback port."""
    srv = TestServer(create_app(Options()), host="127.0.0.1")
    await srv.start_server()
    try:
        yield srv
    finally:
        await srv.close()
        assert srv.app is not None
        assert srv.app[SESSIONS] == {}, "sessions left open after shutdown"


def base_url(srv: TestServer) -> str:
    return f"http://127.0.0.1:{srv.port}"


async def close_after(url: str, messages: list[object]) -> tuple[int | None, str]:
    """Open a WebSocket to ``url``, send ``messages`` (bytes as binary, str as text) and return the close code and
    reason the server answered with."""
    import aiohttp

    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        for message in messages:
            if isinstance(message, bytes):
                await ws.send_bytes(message)
            else:
                await ws.send_str(str(message))
        reason = ""
        while True:
            received = await asyncio.wait_for(ws.receive(), 15)
            if received.type == aiohttp.WSMsgType.CLOSE:
                reason = str(received.extra or "")
            if received.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                break
        return ws.close_code, reason


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves voicegate tasks running once it has finished."""
    yield
    await asyncio.sleep(0)
    leaked = [t.get_name() for t in asyncio.all_tasks()
              if t is not asyncio.current_task() and not t.done() and t.get_name().startswith("call-")]
    assert not leaked, f"leaked tasks: {leaked}"
