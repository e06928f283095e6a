"""A Python WebRTC caller (aiortc): sends a clip as its microphone, records the bot, reads the ``events`` channel.

Used by the tests and by ``voicegate load``; any WebRTC client that speaks the same ``POST /offer`` works.
"""

from __future__ import annotations

import asyncio
import fractions
import json
import time
from collections import deque
from typing import Any

import aiohttp
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame

from voicegate.media.inbound import shorten_jitter_buffer

RATE = 48_000
FRAME = 960


class ClipTrack(MediaStreamTrack):
    """A paced microphone: plays ``pcm`` (48 kHz mono s16) once after ``delay_secs`` of silence, then silence.

    Each 20 ms frame is sent when a microphone could send it, once its last sample has been captured (aiortc's own
    tracks send a frame when its first sample is due, 20 ms earlier than any real capture could).
    """

    kind = "audio"

    def __init__(self, pcm: np.ndarray | None = None, delay_secs: float = 0.0) -> None:
        super().__init__()
        self.pcm = np.zeros(0, np.int16) if pcm is None else pcm.astype(np.int16)
        self.delay_samples = int(delay_secs * RATE)
        self.sent_frames = 0
        self._start: float | None = None
        self._pos = 0
        self.clip_started_at: float | None = None
        self.clip_started = asyncio.Event()
        """Set when the first sample of the scheduled clip has been sent."""
        self.echo: deque[np.ndarray] | None = None
        """When set (by :meth:`Caller.loop_back`), the bot's received audio is mixed back into the microphone."""
        self.echo_delay_frames = 0
        self.echo_gain = 0.0

    def schedule(self, pcm: np.ndarray, delay_secs: float) -> None:
        """Play ``pcm`` ``delay_secs`` from now."""
        self.pcm = pcm.astype(np.int16)
        self._pos = 0
        self.delay_samples = self.sent_frames * FRAME + int(delay_secs * RATE)
        self.clip_started_at = None
        self.clip_started.clear()

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.time()
        # A microphone hands over a packet once its last sample is captured: frame k leaves at the end of its 20 ms.
        wait = self._start + (self.sent_frames + 1) * FRAME / RATE - time.time()
        if wait > 0:
            await asyncio.sleep(wait)
        out = np.zeros(FRAME, np.int16)
        t = self.sent_frames * FRAME
        if t + FRAME > self.delay_samples and self._pos < len(self.pcm):
            lead = max(0, self.delay_samples - t)
            take = min(FRAME - lead, len(self.pcm) - self._pos)
            if self._pos == 0:  # when that sample was captured: one frame before this packet leaves
                self.clip_started_at = time.monotonic() + (lead - FRAME) / RATE
                self.clip_started.set()
            out[lead:lead + take] = self.pcm[self._pos:self._pos + take]
            self._pos += take
        if self.echo is not None and len(self.echo) > self.echo_delay_frames:
            # The speaker-to-microphone path of a phone without echo cancellation: delayed, attenuated.
            leak = self.echo.popleft().astype(np.float32) * self.echo_gain
            out = np.clip(out.astype(np.float32) + leak, -32768, 32767).astype(np.int16)
        frame = AudioFrame.from_ndarray(out.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = t
        frame.time_base = fractions.Fraction(1, RATE)
        self.sent_frames += 1
        return frame


class Caller:
    """One WebRTC call to a voicegate server, as an independent client would make it."""

    def __init__(self, base_url: str, mic: ClipTrack | None = None, token: str | None = None,
                 keep_frames: bool = True, jitter_frames: int = 1) -> None:
        self.base_url = base_url
        self.jitter_frames = jitter_frames
        self.token = token
        self.keep_frames = keep_frames
        self.frames_received = 0
        self.mic = mic or ClipTrack()
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.events: list[dict[str, Any]] = []
        self.bot_frames: list[np.ndarray] = []
        self.bot_levels: list[tuple[float, float]] = []
        """(monotonic arrival time, RMS in s16 units) of every frame of the bot's audio received."""
        self.call_id = ""
        self._reader: asyncio.Task[None] | None = None
        self._event_waiters: list[tuple[str, asyncio.Future[dict[str, Any]]]] = []

    async def connect(self) -> None:
        self.pc.addTrack(self.mic)
        channel = self.pc.createDataChannel("events")

        @channel.on("message")
        def on_message(message: str) -> None:
            event = json.loads(message)
            event["_received"] = time.monotonic()
            self.events.append(event)
            for type_, fut in list(self._event_waiters):
                if type_ == event["type"] and not fut.done():
                    fut.set_result(event)

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            # Like a browser on a LAN (adaptive jitter buffer of a frame or two), not aiortc's fixed 80 ms.
            for receiver in self.pc.getReceivers():
                if receiver.track is track:
                    shorten_jitter_buffer(receiver, self.jitter_frames)
            self._reader = asyncio.ensure_future(self._read(track))

        await self.pc.setLocalDescription(await self.pc.createOffer())
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{self.base_url}/offer", headers=headers, json={
                "sdp": self.pc.localDescription.sdp, "type": self.pc.localDescription.type,
            }) as res:
                body = await res.json()
                if res.status != 200:
                    raise RuntimeError(f"offer refused ({res.status}): {body.get('error')}")
        self.call_id = body["call_id"]
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type=body["type"]))

    async def _read(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                arrived = time.monotonic()
                self.frames_received += 1
                data = frame.to_ndarray().reshape(-1)  # type: ignore[union-attr]
                self.bot_levels.append((arrived, float(np.sqrt(np.mean(data.astype(np.float32) ** 2)))))
                if self.keep_frames:
                    self.bot_frames.append(data)
                if self.mic.echo is not None:
                    channels = len(frame.layout.channels)  # type: ignore[union-attr]
                    self.mic.echo.append(data.reshape(-1, channels).mean(axis=1) if channels > 1 else data)
        except MediaStreamError:
            pass

    def loop_back(self, delay_ms: float, gain_db: float) -> None:
        """Mix the bot's received audio back into the microphone ``delay_ms`` later at ``gain_db`` (an echo path
        with no echo cancellation, as on a speakerphone or a phone line)."""
        self.mic.echo = deque(maxlen=64)
        self.mic.echo_delay_frames = max(0, round(delay_ms / (1000 * FRAME / RATE)))
        self.mic.echo_gain = 10 ** (gain_db / 20)

    async def wait_event(self, type_: str, timeout: float = 10.0) -> dict[str, Any]:
        for event in self.events:
            if event["type"] == type_:
                return event
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._event_waiters.append((type_, fut))
        return await asyncio.wait_for(fut, timeout)

    def bot_rms(self, last_frames: int | None = None) -> float:
        frames = self.bot_frames[-last_frames:] if last_frames else self.bot_frames
        if not frames:
            return 0.0
        data = np.concatenate(frames).astype(np.float64)
        return float(np.sqrt(np.mean(data ** 2)))

    async def close(self) -> None:
        await self.pc.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
