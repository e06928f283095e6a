"""Every core and past one machine: ``voicegate serve --workers N`` and several hosts behind HAProxy.

Real processes throughout: the supervisor and its workers, real WebRTC callers, and Debian's HAProxy with the
repository's ``deploy/haproxy.cfg``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from voicegate import __version__
from voicegate.build import source_commit
from voicegate.client import Caller, ClipTrack
from voicegate.load import process_tree, scrape, start_server

from .conftest import close_after

ROOT = Path(__file__).resolve().parents[1]


async def _get(url: str) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as http, http.get(url) as res:
        return res.status, await res.json()


async def _until(check: object, within_secs: float) -> None:
    deadline = time.monotonic() + within_secs
    while time.monotonic() < deadline:
        if await check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.2)
    raise AssertionError("condition not reached in time")


async def test_workers_share_one_port_by_capacity_and_survive_a_crash() -> None:
    server = await start_server(1, workers=2)
    try:
        workers = [p for p in process_tree(server.proc.pid) if p != server.proc.pid]
        assert len(workers) == 2, "two worker processes under the supervisor"
        callers = [Caller(server.url, ClipTrack(), keep_frames=False) for _ in range(3)]
        results = await asyncio.gather(*(c.connect() for c in callers), return_exceptions=True)
        refused = [r for r in results if isinstance(r, BaseException)]
        assert len(refused) == 1 and "503" in str(refused[0]) and "at capacity" in str(refused[0]), \
            "two workers of one call each take two calls; the third is refused before any worker is asked"
        live = [c for c, r in zip(callers, results, strict=True) if not isinstance(r, BaseException)]
        for caller in live:
            await caller.wait_event("bot.speaking", timeout=20)
        await asyncio.sleep(0.5)
        assert all(c.frames_received > 10 for c in live), "each call's media flows straight to its worker"

        async def both_counted() -> bool:
            _, health = await _get(f"{server.url}/healthz")
            return health["sessions"] == 2 and health["full"] is True

        await _until(both_counted, 5)
        status, ready = await _get(f"{server.url}/readyz")
        assert status == 503 and ready["ready"] is False
        metrics = await scrape(server.url)
        assert metrics["voicegate_active_sessions"] == 2.0, "/metrics sums the workers' series"
        build = f'voicegate_build_info{{commit="{source_commit()}",version="{__version__}"}}'
        assert metrics.get(build) == 3.0, "the supervisor and both workers say which code they run"
        async with aiohttp.ClientSession() as http, http.get(f"{server.url}/metrics") as res:
            text = await res.text()
        for index in (0, 1):
            assert f'voicegate_active_sessions{{worker="{index}"}} 1.0' in text
        for caller in callers:
            await caller.close()

        async def drained() -> bool:
            status, health = await _get(f"{server.url}/healthz")
            return health["sessions"] == 0 and status == 200

        await _until(drained, 10)
        assert (await _get(f"{server.url}/readyz"))[0] == 200

        os.kill(workers[0], signal.SIGKILL)

        async def restarted() -> bool:
            _, health = await _get(f"{server.url}/healthz")
            return health["worker_restarts"] == 1 and health["workers"] == 2

        await _until(restarted, 60)
        caller = Caller(server.url, ClipTrack(), keep_frames=False)
        await caller.connect()
        await caller.wait_event("bot.speaking", timeout=20)
        await caller.close()
    finally:
        tree = process_tree(server.proc.pid)
        server.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(server.proc.wait(), 30)
    assert code == 0, "SIGTERM drains every worker and the supervisor exits cleanly"
    await asyncio.sleep(0.5)
    assert not [p for p in tree if Path(f"/proc/{p}").exists() and "zombie" not in
                Path(f"/proc/{p}/status").read_text().lower()], "no worker outlives the supervisor"


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed (make install adds it)")
async def test_two_hosts_behind_haproxy_take_twenty_calls() -> None:
    hosts = [await start_server(2, workers=1), await start_server(2, workers=1)]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        lb_port = s.getsockname()[1]
    env = {**os.environ, "VOICEGATE_LB_BIND": f"127.0.0.1:{lb_port}",
           "VOICEGATE_HOST1": hosts[0].url.removeprefix("http://"),
           "VOICEGATE_HOST2": hosts[1].url.removeprefix("http://")}
    proxy = await asyncio.create_subprocess_exec("haproxy", "-db", "-f", str(ROOT / "deploy" / "haproxy.cfg"),
                                                 env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lb = f"http://127.0.0.1:{lb_port}"
    try:
        async def up() -> bool:
            try:
                return (await _get(f"{lb}/healthz"))[0] == 200
            except aiohttp.ClientError:
                return False

        await _until(up, 10)
        await asyncio.sleep(1.0)  # the first health checks mark both hosts up
        gate = asyncio.Semaphore(4)  # as many calls at once as both hosts hold together
        failures: list[str] = []

        async def one_call() -> None:
            async with gate:
                caller = Caller(lb, ClipTrack(), keep_frames=False)
                try:
                    await caller.connect()
                    await caller.wait_event("bot.speaking", timeout=20)
                    await asyncio.sleep(0.3)
                    if caller.frames_received == 0:
                        failures.append("no audio")
                except Exception as exc:  # every failure is counted and reported
                    failures.append(repr(exc))
                finally:
                    await caller.close()
                await asyncio.sleep(0.6)  # the host notices the hang-up before the next offer

        await asyncio.gather(*(one_call() for _ in range(20)))
        assert failures == [], failures
        answered = [(await scrape(h.url)).get('voicegate_offers_total{outcome="answered"}', 0.0) for h in hosts]
        assert sum(answered) == 20 and min(answered) >= 3, f"offers spread over both hosts: {answered}"
    finally:
        proxy.terminate()
        await asyncio.wait_for(proxy.wait(), 10)
        for host in hosts:
            await host.stop()


def _holders(root: int, server_port: int, client_port: int) -> set[int]:
    """Processes of ``root``'s tree holding the server end of the loopback TCP connection from ``client_port``."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, remote, inode = (line.split()[i] for i in (1, 2, 9))
            if int(local.rsplit(":", 1)[1], 16) == server_port and int(remote.rsplit(":", 1)[1], 16) == client_port:
                inodes.add(f"socket:[{inode}]")
    holders = set()
    for pid in process_tree(root):
        try:
            if any(os.readlink(fd) in inodes for fd in Path(f"/proc/{pid}/fd").iterdir()):
                holders.add(pid)
        except OSError:
            continue
    return holders


async def _ws_call(url: str, server_pid: int, query: str = "") -> tuple[int | None, int, list[str], set[int]]:
    """A 2 s ``/ws`` call: its close code, the bot's frames, the event types, and who held the connection."""
    import json

    async with aiohttp.ClientSession() as http, http.ws_connect(f"{url}/ws{query}") as ws:
        await ws.send_str(json.dumps({"type": "start", "sample_rate": 16000, "encoding": "pcm16"}))
        frames, kinds = 0, []

        async def read() -> None:
            nonlocal frames
            async for message in ws:
                if message.type == aiohttp.WSMsgType.BINARY:
                    frames += 1
                else:
                    kinds.append(json.loads(message.data)["type"])

        reader = asyncio.ensure_future(read())
        for _ in range(100):
            await ws.send_bytes(b"\x00" * 640)
            await asyncio.sleep(0.02)
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        holders = _holders(server_pid, port, ws.get_extra_info("sockname")[1])
        await ws.send_str(json.dumps({"type": "stop"}))
        await asyncio.wait_for(reader, 10)
    return ws.close_code, frames, kinds, holders


async def _raw_exchange(port: int, request: bytes) -> bytes:
    """Everything the server sends on one connection after ``request``, until it closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        return await asyncio.wait_for(reader.read(-1), 10)
    finally:
        writer.close()


def _masked(opcode: int, payload: bytes) -> bytes:
    """A client's WebSocket frame (payload under 126 bytes)."""
    mask = os.urandom(4)
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def _raw_bad_first_message(port: int) -> tuple[bytes, bytes, bytes]:
    """A hand-written ``/ws`` upgrade, then a text frame that is not JSON: the response head, the server's close
    frame, and whatever else arrived before the server closed the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                     b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        writer.write(_masked(0x1, b"hello"))
        first = await asyncio.wait_for(reader.readexactly(2), 10)
        close = first + await reader.readexactly(first[1] & 0x7F)
        writer.write(_masked(0x8, close[2:4]))
        rest = await asyncio.wait_for(reader.read(-1), 10)
        return head, close, rest
    finally:
        writer.close()


async def test_a_call_that_ends_frees_its_place_before_the_next_poll() -> None:
    """The supervisor reads its workers' calls only once a minute here, yet a call placed after another hung up
    gets the place it freed: finding no room, the supervisor asks its workers again before refusing."""
    server = await start_server(1, workers=2, env={"VOICEGATE_SUPERVISOR_POLL_SECS": "60"})
    url = server.url.replace("http://", "ws://") + "/ws"
    start = json.dumps({"type": "start", "sample_rate": 16_000, "encoding": "pcm16"})

    async def call(http: aiohttp.ClientSession) -> aiohttp.ClientWebSocketResponse:
        ws = await http.ws_connect(url)
        await ws.send_str(start)
        async for message in ws:
            if message.type == aiohttp.WSMsgType.TEXT and json.loads(message.data)["type"] == "session.started":
                return ws
        raise AssertionError("no session.started")

    try:
        async with aiohttp.ClientSession() as http:
            first, second = await call(http), await call(http)
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await call(http)
            assert refused.value.status == 503, "two workers of one call each: the third call is refused"
            await first.send_str(json.dumps({"type": "stop"}))
            async for _ in first:  # until the worker closes it: the call has ended there
                pass
            third = None
            for _ in range(25):  # the worker may take a moment to count the call gone
                try:
                    third = await call(http)
                    break
                except aiohttp.WSServerHandshakeError as exc:
                    assert exc.status == 503
                    await asyncio.sleep(0.2)
            assert third is not None, "the freed place was not seen before the next poll (a minute away)"
            for ws in (second, third):
                await ws.close()
    finally:
        await server.stop()


async def test_websocket_calls_are_handed_to_a_worker_with_their_close_codes() -> None:
    server = await start_server(2, workers=2)
    url = server.url.replace("http://", "ws://")
    port = int(server.url.rsplit(":", 1)[1])
    try:
        async with aiohttp.ClientSession() as http, http.ws_connect(f"{url}/ws") as ws:
            await ws.send_str("hello")
            closing = await ws.receive()
            assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 1007
            assert "must be JSON" in closing.extra, "the worker's close reason reaches the client"
        head, close, rest = await _raw_bad_first_message(port)
        assert head.startswith(b"HTTP/1.1 101 ") and head.count(b"HTTP/1.1") == 1, head
        assert close[0] == 0x88 and int.from_bytes(close[2:4], "big") == 1007 and b"must be JSON" in close
        assert rest == b"", "the worker's 101 and close frame are all the client receives"
        code, frames, kinds, holders = await _ws_call(url, server.proc.pid)
        assert code == 1000 and kinds[0] == "session.started" and kinds[-1] == "session.ended"
        assert frames > 50, "the bot's audio reaches the client"
        workers = set(process_tree(server.proc.pid)) - {server.proc.pid}
        assert len(holders) == 1 and holders <= workers, \
            f"a worker, not the supervisor ({server.proc.pid}), holds the client's connection: {holders}"
        # A handshake the worker refuses: its own answer (its /twilio hint), then it closes the connection.
        answer = await _raw_exchange(port, b"GET /twilio HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                                           b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n")
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 426 ") and head.count(b"HTTP/1.1") == 1, answer
        assert b"Twilio <Stream" in body and body.endswith(b"}"), "the worker's 426, and nothing after it"
        status, health = await _get(f"{server.url}/healthz")
        assert status == 200 and health["workers"] == 2
    finally:
        await server.stop()


async def test_twilio_and_the_token_through_the_supervisor_and_the_relay_fallback() -> None:
    from .test_twilio import FakeTwilio, start_message

    server = await start_server(2, workers=2, env={"VOICEGATE_TOKEN": "sekrit"})
    url = server.url.replace("http://", "ws://")
    try:
        phone = FakeTwilio(server.url)
        assert await phone.call(np.zeros(8000 * 2, np.int16), custom={"token": "sekrit"}) == 1000
        assert sum(m["event"] == "media" for _, m in phone.received) > 50, "the bot's audio reaches the phone"
        code, reason = await close_after(f"{server.url}/twilio", [start_message(token="wrong")])
        assert code == 1008 and "token" in reason, "the worker checks the token in the start message"
        async with aiohttp.ClientSession() as http, http.get(f"{server.url}/ws?token=wrong") as res:
            assert res.status == 401, "a wrong token is refused before any worker is asked"
        # Without the workers' hand-off sockets the supervisor relays the call itself.
        for pid in set(process_tree(server.proc.pid)) - {server.proc.pid}:
            environ = dict(item.split("=", 1) for item in
                           Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item)
            Path(environ["VOICEGATE_HANDOFF_SOCKET"]).unlink()
        code, frames, kinds, holders = await _ws_call(url, server.proc.pid, "?token=sekrit")
        assert code == 1000 and frames > 50 and kinds[-1] == "session.ended"
        assert holders == {server.proc.pid}, "relayed: the supervisor holds the client's connection"
    finally:
        await server.stop()


@pytest.mark.parametrize("workers", [1, 2])
async def test_readyz_waits_for_the_models_while_healthz_answers(workers: int) -> None:
    """A server that has just started is alive (``/healthz`` 200) but not ready (``/readyz`` 503, ``warming``)
    until its models are in memory; then ready. A load balancer sends it no call that would wait seconds for them."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "voicegate", "serve", "--port", str(port), "--workers", str(workers),
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    seen: list[tuple[int, bool, int]] = []  # (readyz status, warming, healthz status)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                health_status, health = await _get(f"{url}/healthz")
                status, ready = await _get(f"{url}/readyz")
            except aiohttp.ClientError:
                await asyncio.sleep(0.02)
                continue
            if workers > 1 and health["workers"] < 1:
                await asyncio.sleep(0.02)  # the supervisor answers before any worker does: not this test's subject
                continue
            seen.append((status, bool(ready["warming"]), health_status))
            if status == 200:
                break  # (here the models load in ≈ 0.5 s: polled every 20 ms, warming is seen many times)
            await asyncio.sleep(0.02)
        assert seen and seen[-1][:2] == (200, False), seen
        assert any(s == (503, True, 200) for s in seen), f"never seen warming: {seen}"
        assert all(s[0] == 200 or s[1] for s in seen), "503 only for warming (the server is empty)"
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
