"""Every core and past one machine: ``voicegate serve --workers N`` and several hosts behind HAProxy.

Real processes throughout: the supervisor and its workers, real WebRTC callers, and Debian's HAProxy with the
repository's ``deploy/haproxy.cfg``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest

from voicegate.client import Caller, ClipTrack
from voicegate.load import process_tree, scrape, start_server

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


async def test_websocket_calls_are_relayed_to_a_worker_with_their_close_codes() -> None:
    import json

    server = await start_server(1, workers=2)
    url = server.url.replace("http://", "ws://")
    try:
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(f"{url}/ws") as ws:
                await ws.send_str("hello")
                closing = await ws.receive()
                assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 1007
                assert "must be JSON" in closing.extra, "the worker's close reason reaches the client"
            async with http.ws_connect(f"{url}/ws") as ws:
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
                await ws.send_str(json.dumps({"type": "stop"}))
                await asyncio.wait_for(reader, 10)
                assert ws.close_code == 1000 and kinds[0] == "session.started" and kinds[-1] == "session.ended"
                assert frames > 50, "the bot's audio comes back through the supervisor"
    finally:
        await server.stop()
