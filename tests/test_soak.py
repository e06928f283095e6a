"""A short soak in CI: connect / talk / hang up repeatedly; sessions, tasks, threads and fds stay flat."""

from __future__ import annotations

import asyncio
import os
import threading

from aiohttp.test_utils import TestServer

from tests.conftest import base_url
from voicegate.audio.pcm import resample
from voicegate.client import Caller, ClipTrack
from voicegate.server.app import SESSIONS
from voicegate.tts.espeak import EspeakTts


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _settle(srv: TestServer) -> None:
    for _ in range(100):
        if not srv.app[SESSIONS]:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)


async def test_repeated_calls_leave_nothing_behind(server: TestServer) -> None:
    stop = resample((await EspeakTts(sample_rate=16_000).synthesize("stop")).pcm, 16_000, 48_000)
    snapshots = []
    for cycle in range(6):
        caller = Caller(base_url(server), ClipTrack(), keep_frames=False)
        await caller.connect()
        await caller.wait_event("bot.speaking")
        caller.mic.schedule(stop, 0.0)
        await caller.wait_event("bot.paused", timeout=10)
        await caller.close()
        await _settle(server)
        assert not server.app[SESSIONS]
        if cycle >= 1:  # the first call loads the shared models and their thread pools
            snapshots.append((len(asyncio.all_tasks()), threading.active_count(), _fds()))
    tasks, threads, fds = zip(*snapshots, strict=True)
    assert max(tasks) - min(tasks) <= 2, snapshots
    assert max(threads) - min(threads) <= 2, snapshots
    assert max(fds) - min(fds) <= 4, snapshots
