"""A real WebRTC call through two aiortc peers: inbound samples, the bot's voice, the events channel."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import numpy as np
from aiohttp.test_utils import TestServer

from tests.conftest import base_url
from voicegate.audio.pcm import load_audio
from voicegate.client import Caller, ClipTrack
from voicegate.media.inbound import ImmediateJitterBuffer
from voicegate.server.app import SESSIONS


async def _wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def test_immediate_jitter_buffer_hands_each_packet_on_and_drops_late_ones() -> None:
    """aiortc's buffer releases a frame only when the next packet arrives (20 ms late); this one at once."""
    from aiortc.rtp import RtpPacket

    def packet(seq: int) -> RtpPacket:
        p = RtpPacket(payload_type=111, sequence_number=seq, timestamp=seq * 960)
        p._data = bytes([seq % 256])  # type: ignore[attr-defined]
        return p

    buffer = ImmediateJitterBuffer(16)
    got = [buffer.add(packet(seq))[1] for seq in (65534, 65535, 0, 2, 1, 2, 3)]
    assert [f.data[0] if f is not None else None for f in got] == [254, 255, 0, 2, None, None, 3]
    assert [f.timestamp for f in got if f is not None][:2] == [65534 * 960, 65535 * 960]
    assert buffer.dropped == 2


async def test_inbound_path_receives_caller_audio_at_16k(server: TestServer, shared_data) -> None:  # type: ignore[no-untyped-def]
    clip = load_audio(shared_data / "speech/asr_test_wavs/vosk-api_python_example_test.wav", 48_000)[: 48_000 * 2]
    caller = Caller(base_url(server), ClipTrack(clip, delay_secs=0.3))
    await caller.connect()
    try:
        session = server.app[SESSIONS][caller.call_id]
        await _wait_for(lambda: caller.mic._pos >= len(clip))
        sent_frames = caller.mic.sent_frames
        await _wait_for(lambda: session.inbound is not None
                        and session.inbound.received_samples >= sent_frames * 320 - 2 * 320)
        received = session.inbound.received_samples
        # Every 20 ms frame the caller sent arrives as 320 samples at 16 kHz (a frame or two may still be in flight).
        assert abs(received - sent_frames * 320) <= 4 * 320, (received, sent_frames)
        assert session.inbound.dropped_chunks == 0
        buffers = [r._RTCRtpReceiver__jitter_buffer for r in session.pc.getReceivers()]
        assert any(isinstance(b, ImmediateJitterBuffer) for b in buffers), "each packet goes to the gate at once"
        # Real speech, not silence: the energy that arrived matches the energy sent (Opus is lossy, not that lossy).
        sent_rms = float(np.sqrt(np.sum(clip.astype(np.float64) ** 2) / (sent_frames * 960)))
        assert sent_rms > 100
        assert 0.6 * sent_rms < session.inbound_rms < 1.5 * sent_rms, (session.inbound_rms, sent_rms)
    finally:
        await caller.close()
    await _wait_for(lambda: not server.app[SESSIONS])


async def test_bot_greets_within_1_5_s_and_events_flow(server: TestServer) -> None:
    caller = Caller(base_url(server))
    await caller.connect()
    try:
        started = await caller.wait_event("session.started")
        speaking = await caller.wait_event("bot.speaking")
        assert speaking["t_ms"] - started["t_ms"] < 1500
        assert speaking["text"].startswith("Hi!")
        assert all("t_ms" in e and "type" in e for e in caller.events)
        await asyncio.sleep(1.0)
        assert caller.bot_rms(last_frames=25) > 200, "the caller hears the bot's voice"
        async with aiohttp.ClientSession() as http, http.get(f"{base_url(server)}/healthz") as res:
            assert await res.json() == {"status": "ok", "sessions": 1, "max_sessions": 4, "full": False,
                                        "warming": False}
        async with aiohttp.ClientSession() as http, http.get(f"{base_url(server)}/readyz") as res:
            assert res.status == 200 and (await res.json())["ready"] is True
    finally:
        await caller.close()
    await _wait_for(lambda: not server.app[SESSIONS])


async def test_two_calls_are_independent(server: TestServer) -> None:
    a, b = Caller(base_url(server)), Caller(base_url(server))
    await a.connect()
    await b.connect()
    try:
        await a.wait_event("bot.speaking")
        await b.wait_event("bot.speaking")
        assert a.call_id != b.call_id
        await a.close()
        await _wait_for(lambda: len(server.app[SESSIONS]) == 1)
        frames_before = len(b.bot_frames)
        await asyncio.sleep(0.5)
        assert len(b.bot_frames) > frames_before + 15, "the other call keeps streaming"
        assert np.abs(np.concatenate(b.bot_frames[-20:])).max() > 0
    finally:
        await b.close()
    await _wait_for(lambda: not server.app[SESSIONS])


async def _call_with_clip(server: TestServer, clip16k: np.ndarray) -> Caller:
    from voicegate.audio.pcm import resample

    caller = Caller(base_url(server), ClipTrack())
    await caller.connect()
    await caller.wait_event("bot.speaking")
    await asyncio.sleep(1.0)
    # A caller at a normal speaking level: peak at -6 dBFS.
    peak = max(1, int(np.abs(clip16k.astype(np.int32)).max()))
    level = (clip16k.astype(np.float32) * (16_000 / peak)).astype(np.int16)
    caller.mic.schedule(resample(level, 16_000, 48_000), 0.0)
    return caller


async def test_real_call_pause_then_stop_on_spoken_stop(server: TestServer, shared_data) -> None:  # type: ignore[no-untyped-def]
    # A recording both detectors hear on every CPU tried (spotter hit, Whisper "Stop."): this test is about the
    # plumbing of a real call; hearing rates over many recordings are in test_gate / test_asr.
    clip = load_audio(sorted((shared_data / "speech/speech_commands/stop").glob("*.wav"))[7], 16_000)
    caller = await _call_with_clip(server, clip)
    try:
        paused = await caller.wait_event("bot.paused", timeout=10)
        stopped = await caller.wait_event("bot.stopped", timeout=10)
        at_stop = len(caller.bot_frames)
        assert stopped["t_ms"] >= paused["t_ms"]
        verdict = await caller.wait_event("gate.verdict")
        assert verdict["label"] == "interrupt"
        reply = await caller.wait_event("agent.reply", timeout=15)
        at_reply = len(caller.bot_frames)
        assert reply["text"].startswith("Okay, I stopped")
        # Between the stop and the short acknowledgement, nothing of the monologue plays (5 frames in flight).
        quiet = caller.bot_frames[at_stop + 5:at_reply]
        assert len(quiet) >= 5
        assert float(np.sqrt(np.mean(np.concatenate(quiet).astype(np.float64) ** 2))) < 50
    finally:
        await caller.close()
    await _wait_for(lambda: not server.app[SESSIONS])


async def test_real_call_pause_then_resume_on_backchannel(server: TestServer, shared_data) -> None:  # type: ignore[no-untyped-def]
    clip = load_audio(sorted((shared_data / "speech/speech_commands/yes").glob("*.wav"))[6], 16_000)
    caller = await _call_with_clip(server, clip)
    try:
        await caller.wait_event("bot.paused", timeout=10)
        try:
            resumed = await caller.wait_event("bot.resumed", timeout=10)
        except TimeoutError:
            raise AssertionError([e for e in caller.events if e["type"] in ("gate.verdict", "asr.final")]) from None
        assert not any(e["type"] == "bot.stopped" for e in caller.events)
        await asyncio.sleep(0.8)
        assert caller.bot_rms(last_frames=25) > 200, "the bot talks again"
        assert resumed["t_ms"] > 0
    finally:
        await caller.close()
    await _wait_for(lambda: not server.app[SESSIONS])
