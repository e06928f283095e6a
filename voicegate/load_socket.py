"""Cheap callers for ``voicegate load --transport ws|twilio``: real WebSocket clients that stream PCM from a clip.

A WebRTC caller (aiortc: ICE, DTLS, SRTP, an Opus encoder and decoder, a decoder thread) costs about as much as the
server's side of the call, so on one machine it hides the server's capacity. These callers open ``GET /ws``
(16 kHz PCM16 both ways) or ``GET /twilio`` (Media Streams: base64 μ-law at 8 kHz in JSON) and do no more than a
telephony bridge would: send one 20 ms chunk when its last sample has been captured, read what comes back, and
note when it arrived. The time to pause is timed **on the caller's side**: from the speech onset in the caller's
own stream to the first silent frame received (``/ws``: the start of a run of ``SILENT_RUN_FRAMES`` silent frames,
as in the live benchmark) or to the ``clear`` that tells a phone to drop what it buffered (``/twilio``: the bridge
streams nothing while the bot is quiet).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np

from voicegate.audio.pcm import mulaw_decode, mulaw_encode, resample

WS_RATE = 16_000
"""``/ws`` callers send and receive 16 kHz PCM16 (what the README tells a ``/ws`` client to send)."""
TWILIO_RATE = 8_000
FRAME_SECS = 0.02
SILENT_RMS = 60.0
"""A received frame quieter than this (s16 RMS, ≈ −55 dBFS) is silence (as in :mod:`voicegate.bench.live`)."""
SILENT_RUN_FRAMES = 5
AUDIBLE_BEFORE_SECS = 0.16
PAUSE_WINDOW_SECS = 1.5
"""A pause counts for a phrase when the server said ``bot.paused``/``bot.stopped`` (``/ws``) or sent ``clear``
(``/twilio``) within this long of its speech onset."""


@dataclass
class Phrase:
    """A clip the caller says: PCM at the transport's rate and where its speech starts (Silero on the clean clip)."""

    pcm: np.ndarray
    onset_secs: float


@dataclass
class SocketCaller:
    """One call over ``/ws`` or ``/twilio``; :meth:`run` streams the microphone until :meth:`hang_up`."""

    base_url: str
    transport: str
    token: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    levels: list[tuple[float, float, float]] = field(default_factory=list)
    """(monotonic arrival, RMS in s16 units, seconds of it up to its last sample at :data:`SILENT_RMS` or louder)
    of every frame of the bot's audio received (``/ws``)."""
    media_times: list[float] = field(default_factory=list)
    """Arrival of every ``media`` message (``/twilio``)."""
    clears: list[float] = field(default_factory=list)
    onsets: list[float] = field(default_factory=list)
    """Monotonic time at which each phrase's speech started in the microphone stream."""
    frames_sent: int = 0

    def __post_init__(self) -> None:
        self.rate = WS_RATE if self.transport == "ws" else TWILIO_RATE
        self.frame = int(self.rate * FRAME_SECS)
        self._mic = np.zeros(0, np.int16)
        self._mic_pos = 0
        self._phrase_onset: float | None = None
        self._socket: aiohttp.ClientWebSocketResponse | None = None
        self._speaking = asyncio.Event()
        self._stop = asyncio.Event()
        self._sid = "MZload"

    def say(self, phrase: Phrase) -> None:
        """Start ``phrase`` at the next 20 ms chunk."""
        self._mic, self._mic_pos, self._phrase_onset = phrase.pcm, 0, phrase.onset_secs

    async def wait_speaking(self) -> None:
        """Until the bot speaks (``bot.speaking`` on ``/ws``, the first media on ``/twilio``)."""
        await self._speaking.wait()

    def hang_up(self) -> None:
        """End :meth:`run` after the chunk in flight."""
        self._stop.set()

    async def run(self, http: aiohttp.ClientSession, connected: asyncio.Future[None]) -> None:
        """Connect, stream the microphone in real time and read the bot until :meth:`hang_up`."""
        url = self.base_url.replace("http://", "ws://").replace("https://", "wss://") + f"/{self.transport}"
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            socket = await http.ws_connect(url, headers=headers, max_msg_size=0, heartbeat=None)
        except BaseException as exc:
            if not connected.done():
                connected.set_exception(exc)
            return
        self._socket = socket
        if self.transport == "ws":
            await socket.send_str(json.dumps({"type": "start", "sample_rate": WS_RATE, "encoding": "pcm16"}))
        else:
            await socket.send_str(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            await socket.send_str(json.dumps({"event": "start", "streamSid": self._sid, "start": {
                "streamSid": self._sid, "callSid": "CAload",
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}))
        connected.set_result(None)
        reader = asyncio.ensure_future(self._read(socket))
        try:
            await self._send(socket)
        finally:
            if not socket.closed:
                stop = {"type": "stop"} if self.transport == "ws" else {"event": "stop", "streamSid": self._sid}
                try:
                    await socket.send_str(json.dumps(stop))
                    await asyncio.wait_for(reader, 5)
                except (TimeoutError, aiohttp.ClientError, ConnectionError):
                    pass
                await socket.close()
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def _send(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        start = time.monotonic()
        silence = np.zeros(self.frame, np.int16)
        while not self._stop.is_set() and not socket.closed:
            # A microphone hands a chunk over once its last sample is captured: chunk k leaves at the end of its 20 ms.
            wait = start + (self.frames_sent + 1) * FRAME_SECS - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            chunk = silence
            if self._mic_pos < len(self._mic):
                if self._mic_pos == 0 and self._phrase_onset is not None:
                    self.onsets.append(start + self.frames_sent * FRAME_SECS + self._phrase_onset)
                chunk = self._mic[self._mic_pos:self._mic_pos + self.frame]
                if len(chunk) < self.frame:
                    chunk = np.concatenate([chunk, silence[:self.frame - len(chunk)]])
                self._mic_pos += self.frame
            self.frames_sent += 1
            try:
                if self.transport == "ws":
                    await socket.send_bytes(chunk.astype("<i2").tobytes())
                else:
                    payload = base64.b64encode(mulaw_encode(chunk)).decode()
                    await socket.send_str(json.dumps({"event": "media", "streamSid": self._sid, "media": {
                        "track": "inbound", "chunk": str(self.frames_sent), "payload": payload}}))
            except (aiohttp.ClientError, ConnectionError):
                return

    async def _read(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        async for message in socket:
            now = time.monotonic()
            if message.type == aiohttp.WSMsgType.BINARY:
                pcm = np.frombuffer(message.data, "<i2").astype(np.float32)
                loud = np.flatnonzero(np.abs(pcm) >= SILENT_RMS)
                audible_secs = (int(loud[-1]) + 1) / self.rate if len(loud) else 0.0
                self.levels.append((now, float(np.sqrt(np.dot(pcm, pcm) / max(len(pcm), 1))), audible_secs))
            elif message.type == aiohttp.WSMsgType.TEXT:
                data = json.loads(message.data)
                if self.transport == "ws":
                    data["_received"] = now
                    self.events.append(data)
                    if data.get("type") == "bot.speaking":
                        self._speaking.set()
                    continue
                kind = data.get("event")
                if kind == "media":
                    self.media_times.append(now)
                    self._speaking.set()
                elif kind == "clear":
                    self.clears.append(now)
                elif kind == "mark":  # the phone "played" everything before the mark: say so, as Twilio does
                    await socket.send_str(json.dumps({"event": "mark", "streamSid": self._sid,
                                                      "mark": data.get("mark", {})}))

    def pauses_ms(self) -> list[float]:
        """Caller-side time to pause (ms) for each phrase said while the bot was audible and that paused it."""
        out = []
        for onset in self.onsets:
            if self.transport == "ws":
                pause = self._ws_pause(onset)
            else:
                pause = self._twilio_pause(onset)
            if pause is not None:
                out.append(round(1000 * (pause - onset), 1))
        return out

    def _ws_pause(self, onset: float, voice_end: bool = False) -> float | None:
        told = any(e["type"] in ("bot.paused", "bot.stopped") and onset - 0.04 <= e["_received"] <= onset
                   + PAUSE_WINDOW_SECS for e in self.events)
        before = [rms for t, rms, _ in self.levels if onset - AUDIBLE_BEFORE_SECS <= t < onset]
        if not told or not any(rms >= SILENT_RMS for rms in before):
            return None
        run = 0
        after = [level for level in self.levels if level[0] >= onset]
        for i, (_t, rms, _audible) in enumerate(after):
            run = run + 1 if rms < SILENT_RMS else 0
            if run >= SILENT_RUN_FRAMES:
                first_silent = i - SILENT_RUN_FRAMES + 1
                if not voice_end or first_silent == 0:
                    return after[first_silent][0]
                # The voice ends inside the frame before (the fade): that frame's silent tail earlier in the stream.
                return after[first_silent][0] - (self.frame / self.rate - after[first_silent - 1][2])
        return None

    def voice_end_ms(self) -> list[float]:
        """For the phrases :meth:`pauses_ms` counts (``/ws``): onset to where the bot's voice ends in what the
        caller received — :meth:`pauses_ms`'s first whole silent frame, less the silent tail of the frame before it
        (the one the pause's fade lands in: its samples after the last one at :data:`SILENT_RMS` or louder). This
        says how much of the caller-side pause is the yardstick."""
        if self.transport != "ws":
            return []
        ends = (self._ws_pause(onset, voice_end=True) for onset in self.onsets)
        return [round(1000 * (end - onset), 1) for onset, end in zip(self.onsets, ends, strict=True)
                if end is not None]

    def paused_event_ms(self) -> list[float]:
        """For the phrases :meth:`pauses_ms` counts (``/ws``): onset to the arrival of ``bot.paused`` (or
        ``bot.stopped``), the moment a client that drops its playback buffer on it stops the bot."""
        if self.transport != "ws":
            return []
        out = []
        for onset in self.onsets:
            if self._ws_pause(onset) is None:
                continue
            told = [e["_received"] for e in self.events if e["type"] in ("bot.paused", "bot.stopped")
                    and onset - 0.04 <= e["_received"] <= onset + PAUSE_WINDOW_SECS]
            out.append(round(1000 * (min(told) - onset), 1))
        return out

    def _twilio_pause(self, onset: float) -> float | None:
        if not any(onset - AUDIBLE_BEFORE_SECS <= t < onset for t in self.media_times):
            return None
        return next((t for t in self.clears if onset <= t <= onset + PAUSE_WINDOW_SECS), None)

    def verdict_ms(self) -> list[float]:
        """``gate.verdict`` latencies the server reported (``/ws`` only: a phone line carries no events)."""
        return [float(e["ms_since_onset"]) for e in self.events if e["type"] == "gate.verdict"]


async def socket_phrases(transport: str, phrases_48k: list[np.ndarray]) -> list[Phrase]:
    """The load phrases at the transport's rate (μ-law round trip for ``/twilio``), each with its speech onset."""
    from voicegate.bench.scenario import onset_ms, speech_onset_ms

    rate = WS_RATE if transport == "ws" else TWILIO_RATE
    out = []
    for pcm in phrases_48k:
        at_rate = resample(pcm, 48_000, rate)
        if transport == "twilio":
            at_rate = mulaw_decode(mulaw_encode(at_rate))
        clean16 = resample(pcm, 48_000, 16_000)
        speech = speech_onset_ms(clean16)
        out.append(Phrase(at_rate, (speech if speech is not None else onset_ms(clean16)) / 1000))
    return out
