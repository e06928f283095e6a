"""``GET /ws``: a call over one WebSocket — raw PCM (or μ-law) in and out, the events as text messages.

Protocol (every message on one socket):

1. The client's first message is text: ``{"type": "start", "sample_rate": 8000|16000|24000|48000,
   "encoding": "pcm16"|"mulaw"}`` (``pcm16`` is little-endian signed 16-bit mono).
2. Then binary messages carry the caller's audio in that format, any chunk size.
3. The server sends binary messages of the bot's audio in the same format, paced in real time, one 20 ms frame
   each (silence while the bot is quiet, paused or stopped: a pause or stop silences the very next frame), and
   text messages holding exactly the events of the WebRTC ``events`` data channel.
4. ``{"type": "stop"}`` or closing the socket ends the call cleanly (``session.ended`` is sent first).

Anything else closes the socket with a close code and a reason that names the fix: 1003 (unsupported encoding or
sample rate, binary where text was due), 1007 (not JSON, not an object, a field of the wrong type, a PCM16
message of odd length), 1008 (audio before ``start``, a second ``start``, an unknown message type, no ``start``
within 10 s); a message over the size limit gets 1009 from aiohttp. Other calls are never touched.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from aiohttp import WSCloseCode, WSMsgType, web

from voicegate.audio.pcm import StreamResampler, mulaw_decode, mulaw_encode
from voicegate.call.core import CallCore
from voicegate.config import PIPELINE_SAMPLE_RATE, Options
from voicegate.media.pacer import PacedCall, frame_pacer

log = logging.getLogger(__name__)

SAMPLE_RATES = (8000, 16000, 24000, 48000)
ENCODINGS = ("pcm16", "mulaw")
PLAYOUT_RATES = (16000, 24000, 48000)
"""Client rates the bot is played out at directly (8 kHz clients get the default playout rate, resampled)."""
START_TIMEOUT_SECS = 10.0
MAX_MESSAGE_BYTES = 256 * 1024
"""A second of 48 kHz PCM16 is 96 KB; anything past this is not audio a caller streams."""
CHUNK_SAMPLES = PIPELINE_SAMPLE_RATE // 50
"""The gate is fed at most 20 ms at a time, whatever chunk sizes the client sends."""
MIN_FEED_SAMPLES = PIPELINE_SAMPLE_RATE // 100
"""…and at least 10 ms: tiny messages are gathered first (each feed is a hop to the call's gate thread)."""


class ProtocolError(Exception):
    """A message the protocol does not allow: close the socket with ``code`` and this message as the reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def json_object(text: str, what: str) -> dict[str, Any]:
    """``text`` parsed as a JSON object, or a 1007 :class:`ProtocolError` naming ``what`` was expected."""
    try:
        message = json.loads(text)
    except ValueError as exc:
        raise ProtocolError(WSCloseCode.INVALID_TEXT, f"{what} must be JSON: {exc}") from exc
    if not isinstance(message, dict):
        raise ProtocolError(WSCloseCode.INVALID_TEXT, f"{what} must be a JSON object")
    return message


def parse_start(text: str) -> tuple[int, str]:
    """The ``start`` message's sample rate and encoding, or a :class:`ProtocolError` that says what is wrong."""
    message = json_object(text, "the first message")
    if message.get("type") != "start":
        raise ProtocolError(WSCloseCode.POLICY_VIOLATION,
                            f'the first message must be {{"type": "start", ...}}, not type {message.get("type")!r}')
    rate, encoding = message.get("sample_rate"), message.get("encoding")
    if not isinstance(rate, int) or isinstance(rate, bool):
        raise ProtocolError(WSCloseCode.INVALID_TEXT, "start.sample_rate must be an integer")
    if rate not in SAMPLE_RATES:
        raise ProtocolError(WSCloseCode.UNSUPPORTED_DATA, f"sample_rate {rate} unsupported: use one of {SAMPLE_RATES}")
    if not isinstance(encoding, str):
        raise ProtocolError(WSCloseCode.INVALID_TEXT, "start.encoding must be a string")
    if encoding not in ENCODINGS:
        raise ProtocolError(WSCloseCode.UNSUPPORTED_DATA, f"encoding {encoding!r} unsupported: use pcm16 or mulaw")
    return rate, encoding


class AudioCodec:
    """The client's audio format ↔ the pipeline's: decode + resample in, resample + encode out (stateful).

    Both directions keep pace with the stream (:class:`~voicegate.audio.pcm.StreamResampler`): each 20 ms message
    in gives 20 ms to the gate at once, each 20 ms playout frame gives one 20 ms frame out — a resampler's
    held-back samples would otherwise add a frame (20 ms) each way.
    """

    def __init__(self, sample_rate: int, encoding: str, playout_rate: int) -> None:
        self.sample_rate = sample_rate
        self.encoding = encoding
        self.playout_rate = playout_rate
        self._in = StreamResampler(sample_rate, PIPELINE_SAMPLE_RATE)
        self._out = StreamResampler(playout_rate, sample_rate)
        self._pending = np.zeros(0, dtype=np.int16)

    def decode(self, data: bytes) -> np.ndarray:
        """One binary message → 16 kHz s16 samples."""
        if self.encoding == "mulaw":
            pcm = mulaw_decode(data)
        else:
            if len(data) % 2:
                raise ProtocolError(WSCloseCode.INVALID_TEXT,
                                    f"a pcm16 message must hold whole 2-byte samples, got {len(data)} bytes")
            pcm = np.frombuffer(data, dtype="<i2").astype(np.int16)
        return self._in(pcm)

    def encode(self, pcm: np.ndarray) -> list[bytes]:
        """One outbound frame at the playout rate → whole 20 ms frames in the client's format at its rate (one per
        20 ms frame in)."""
        pcm = self._out(pcm)
        self._pending = np.concatenate([self._pending, pcm]) if len(self._pending) else pcm
        size = self.sample_rate // 50
        out = []
        while len(self._pending) >= size:
            frame, self._pending = self._pending[:size], self._pending[size:]
            out.append(mulaw_encode(frame) if self.encoding == "mulaw" else frame.astype("<i2").tobytes())
        return out


class SocketCall(CallCore):
    """A call whose audio and signalling share one WebSocket (``/ws``, ``/twilio``): a single writer task, the
    caller's audio re-chunked to 20 ms for the gate, and a close that flushes and then sends the protocol's code."""

    def __init__(self, options: Options, socket: web.WebSocketResponse,
                 on_closed: Callable[[CallCore], None] | None = None) -> None:
        super().__init__(options, on_closed)
        self.socket = socket
        self.close_code: int | None = None
        self.close_reason = ""
        self._outbox: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        self._inbound = np.zeros(0, dtype=np.int16)
        self._writer_task: asyncio.Task[None] | None = None
        self._paced: PacedCall | None = None

    def start_writer(self) -> None:
        """Start the only task that writes to the socket (messages go out in the order they were queued)."""
        self._writer_task = self.tasks.spawn(self._writer(), f"{self.transport}-writer")

    def start_playout(self) -> None:
        """Play the bot's voice out on the loop's shared 20 ms clock (:mod:`voicegate.media.pacer`): each frame goes
        to :meth:`send_frame` at its media time."""
        self._paced = frame_pacer(self.playout.options.frame_ms).add(self.playout, self.send_frame)

    def send_frame(self, pcm: np.ndarray) -> None:
        """One frame of the bot's voice (s16 at the playout rate), due now (overridden by adapters)."""

    async def _writer(self) -> None:
        while (item := await self._outbox.get()) is not None:
            if self.socket.closed:
                return
            if isinstance(item, bytes):
                await self.socket.send_bytes(item)
            else:
                await self.socket.send_str(item)

    def protocol_error(self, exc: ProtocolError) -> None:
        """Remember why the socket will be closed."""
        self.close_code, self.close_reason = exc.code, str(exc)
        log.info("call=%s %s protocol error (%d): %s", self.call_id, self.transport, exc.code, exc)

    async def feed_audio(self, pcm: np.ndarray) -> None:
        """Decoded 16 kHz audio of any length → the gate as soon as it is here, in pieces of 10–20 ms.

        Not in whole 20 ms chunks: the resampler holds back a few samples (1 ms from 48 kHz, 2 ms from 8 kHz), so
        with whole chunks every 20 ms message of the client's would reach the gate one message (20 ms) late.
        """
        received_ms = self.clock.now_ms()
        self._inbound = np.concatenate([self._inbound, pcm]) if len(self._inbound) else pcm
        if len(self._inbound) < MIN_FEED_SAMPLES:
            return
        pending, self._inbound = self._inbound, np.zeros(0, dtype=np.int16)
        for start in range(0, len(pending), CHUNK_SAMPLES):
            await self.feed(pending[start:start + CHUNK_SAMPLES], received_ms)

    async def serve(self) -> None:
        """Run the call until it ends; a broken protocol or a missing start closes the socket with a code and a
        reason, and every path closes the call."""
        reason = "client_closed"
        try:
            reason = await self.run()
        except TimeoutError:
            self.close_code, self.close_reason = (WSCloseCode.POLICY_VIOLATION,
                                                  f"no start message within {START_TIMEOUT_SECS:.0f} s")
            reason = "protocol_error"
        except ProtocolError as exc:
            self.protocol_error(exc)
            reason = "protocol_error"
        finally:
            await self.close(reason=reason)

    async def run(self) -> str:
        """The adapter's protocol, until the call ends; returns why (``client_stop``, ``client_closed``, ...)."""
        raise NotImplementedError

    def stop_listening(self) -> None:
        """Detach the adapter's event listener (before the final flush)."""

    async def close_transport(self) -> None:
        """Flush what is queued (``session.ended`` included), then close the socket with the protocol's code and
        reason (or normally)."""
        self.stop_listening()
        if self._paced is not None:
            self._paced.stop()
        self._outbox.put_nowait(None)
        if self._writer_task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._writer_task), 2.0)
            except Exception:  # a dead or stuck socket cannot be flushed; it is closed below all the same
                log.info("call=%s could not flush the socket before closing it", self.call_id)
        if not self.socket.closed:
            await self.socket.close(code=self.close_code or WSCloseCode.OK,
                                    message=self.close_reason.encode()[:120])


class WsCall(SocketCall):
    """A call carried by a WebSocket (:mod:`voicegate.server.ws`)."""

    transport = "ws"

    def __init__(self, options: Options, socket: web.WebSocketResponse,
                 on_closed: Callable[[CallCore], None] | None = None) -> None:
        super().__init__(options, socket, on_closed)
        self.codec: AudioCodec | None = None

    def _send_event(self, event: dict[str, Any]) -> None:
        self._outbox.put_nowait(json.dumps(event))

    def stop_listening(self) -> None:
        """No more events: ``session.ended`` is already queued."""
        self.events.remove_listener(self._send_event)

    def send_frame(self, pcm: np.ndarray) -> None:
        """The bot's voice: every frame, silence included, in the client's format."""
        assert self.codec is not None
        for data in self.codec.encode(pcm):
            self._outbox.put_nowait(data)

    async def run(self) -> str:
        """Until the client stops the call, closes the socket or breaks the protocol."""
        first = await asyncio.wait_for(self.socket.receive(), START_TIMEOUT_SECS)
        if first.type == WSMsgType.BINARY:
            raise ProtocolError(WSCloseCode.POLICY_VIOLATION,
                                'audio before the start message: send {"type": "start", ...} first')
        if first.type != WSMsgType.TEXT:
            return "client_closed"
        rate, encoding = parse_start(first.data)
        if rate in PLAYOUT_RATES:
            self.use_playout_rate(rate)  # the bot's frames go out as they are made: no resampler per frame
        self.codec = AudioCodec(rate, encoding, self.playout.sample_rate)
        await self.open()
        self.events.add_listener(self._send_event, replay=True)
        self.start_writer()
        self.start_playout()
        self.connected(transport="ws", sample_rate=rate, encoding=encoding)
        async for message in self.socket:
            if message.type == WSMsgType.BINARY:
                await self._audio(message.data)
            elif message.type == WSMsgType.TEXT:
                if self._control(message.data):
                    return "client_stop"
            elif message.type == WSMsgType.ERROR:
                return "socket_error"
        return "client_closed"

    async def _audio(self, data: bytes) -> None:
        assert self.codec is not None
        await self.feed_audio(self.codec.decode(data))

    def _control(self, text: str) -> bool:
        """A text message after ``start``; True when it ends the call."""
        kind = json_object(text, "text messages").get("type")
        if kind == "stop":
            return True
        if kind == "start":
            raise ProtocolError(WSCloseCode.POLICY_VIOLATION, "the call has already started: one start per socket")
        raise ProtocolError(WSCloseCode.POLICY_VIOLATION, f"unknown message type {kind!r}: only stop is accepted now")
