"""``GET /twilio``: a phone call through Twilio Media Streams (and the bridges that speak its protocol).

Twilio sends text messages: ``connected``, ``start`` (with ``streamSid`` and ``mediaFormat`` audio/x-mulaw, 8000 Hz,
1 channel), ``media`` (base64 μ-law in ``media.payload``), ``mark`` (a mark we sent has been played), ``dtmf``
and ``stop``. We send ``media`` (base64 μ-law, 20 ms each, with the ``streamSid``), ``mark`` and ``clear``.

The phone side buffers audio beyond our control, so pause-then-resume is designed around it:

- Audio is sent in real time (one 20 ms frame per tick of the playout clock), never far ahead, and only while the
  bot has something to say (no silence is streamed while it is quiet or paused).
- Every ``MARK_EVERY_FRAMES`` frames we send a position mark (``pos:<ms sent>``), and one after each sentence
  (``sentence:<utterance id>``); Twilio returns each when the audio before it has been played, so we know what the
  caller has heard.
- On a pause we send ``clear`` at once (Twilio drops what it buffered) and remember how much had been sent but not
  yet confirmed played; the resume rewinds the playout by that much, so the caller hears the reply continue from
  where they last heard it. On a stop we send ``clear`` too and nothing of the stopped reply follows.

Malformed or out-of-order messages close the socket with a code and a reason, as on ``/ws``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from aiohttp import WSCloseCode, WSMsgType, web

from voicegate.call.core import CallCore
from voicegate.config import Options
from voicegate.server.ws import START_TIMEOUT_SECS, AudioCodec, ProtocolError, SocketCall, json_object

log = logging.getLogger(__name__)

MARK_EVERY_FRAMES = 5
"""A position mark every 100 ms of audio sent."""
MAX_REWIND_MS = 1000.0


def _object(text: str) -> dict[str, Any]:
    message = json_object(text, "a Media Streams message")
    if not isinstance(message.get("event"), str):
        raise ProtocolError(WSCloseCode.INVALID_TEXT, 'a Media Streams message is a JSON object with an "event"')
    return message


class TwilioCall(SocketCall):
    """A call carried by a Twilio Media Streams WebSocket."""

    transport = "twilio"

    def __init__(self, options: Options, socket: web.WebSocketResponse,
                 on_closed: Callable[[CallCore], None] | None = None, token: str | None = None) -> None:
        super().__init__(options, socket, on_closed)
        self.token = token
        """When set, the start message's ``customParameters.token`` must equal it (Twilio cannot send headers)."""
        self.codec = AudioCodec(8000, "mulaw", self.playout.sample_rate)
        self.stream_sid = ""
        self.sent_ms = 0.0
        """Audio sent to the phone side so far."""
        self.played_ms = 0.0
        """Audio the phone side has confirmed playing (through our position marks)."""
        self.rewinds_ms: list[float] = []
        """The rewind prepared at each pause (audio sent but not confirmed played)."""
        self._frames_since_mark = 0
        self._utterance = ""

    # -- outbound ---------------------------------------------------------------------------------------------

    def _send(self, message: dict[str, Any]) -> None:
        self._outbox.put_nowait(json.dumps({**message, "streamSid": self.stream_sid}))

    def send_frame(self, pcm: np.ndarray) -> None:
        """Real-time media: one frame per playout tick, only while the bot is audible."""
        if not pcm.any():
            return  # the bot is quiet or paused: stream nothing, Twilio plays silence
        for data in self.codec.encode(pcm):
            self._send({"event": "media", "media": {"payload": base64.b64encode(data).decode()}})
            self.sent_ms += 20.0
            self._frames_since_mark += 1
            if self._frames_since_mark >= MARK_EVERY_FRAMES:
                self._frames_since_mark = 0
                self._send({"event": "mark", "mark": {"name": f"pos:{self.sent_ms:.0f}"}})

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "bot.paused":
            unplayed = max(0.0, min(self.sent_ms - self.played_ms, MAX_REWIND_MS))
            self.playout.next_rewind_ms = unplayed
            self.rewinds_ms.append(unplayed)
            self._send({"event": "clear"})
            self.played_ms = self.sent_ms  # what was cleared was never played; the rewind re-sends it
        elif kind == "bot.stopped":
            self._send({"event": "clear"})
            self.played_ms = self.sent_ms
        elif kind == "bot.speaking":
            if self._utterance:
                self._send({"event": "mark", "mark": {"name": f"sentence:{self._utterance}"}})
            self._utterance = str(event.get("utterance_id", ""))
        elif kind == "bot.done" and self._utterance:
            self._send({"event": "mark", "mark": {"name": f"sentence:{self._utterance}"}})
            self._utterance = ""

    # -- inbound ----------------------------------------------------------------------------------------------

    async def run(self) -> str:
        """Until Twilio sends ``stop``, the socket closes, or the protocol is broken."""
        while not self.stream_sid:
            message = await asyncio.wait_for(self.socket.receive(), START_TIMEOUT_SECS)
            if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return "client_closed"
            self._before_start(message)
        await self.open()
        self.events.add_listener(self._on_event)
        self.start_writer()
        self.start_playout()
        self.connected(transport="twilio", stream_sid=self.stream_sid)
        async for message in self.socket:
            if message.type == WSMsgType.TEXT:
                if await self._after_start(_object(message.data)):
                    return "client_stop"
            elif message.type == WSMsgType.BINARY:
                raise ProtocolError(WSCloseCode.UNSUPPORTED_DATA, "Media Streams messages are text (JSON)")
        return "client_closed"

    def _before_start(self, message: Any) -> None:
        if message.type != WSMsgType.TEXT:
            raise ProtocolError(WSCloseCode.UNSUPPORTED_DATA, "Media Streams messages are text (JSON)")
        data = _object(message.data)
        event = data["event"]
        if event == "connected":
            return
        if event != "start":
            raise ProtocolError(WSCloseCode.POLICY_VIOLATION, f"{event!r} before start: Twilio sends start first")
        start = data.get("start")
        if not isinstance(start, dict):
            raise ProtocolError(WSCloseCode.INVALID_TEXT, "start.start must be an object")
        sid = data.get("streamSid") or start.get("streamSid")
        if not isinstance(sid, str) or not sid:
            raise ProtocolError(WSCloseCode.INVALID_TEXT, "start has no streamSid")
        if self.token is not None:
            params = start.get("customParameters")
            given = params.get("token") if isinstance(params, dict) else None
            if not isinstance(given, str) or not hmac.compare_digest(given.encode(), self.token.encode()):
                raise ProtocolError(WSCloseCode.POLICY_VIOLATION, 'missing or wrong token: add <Parameter '
                                    'name="token" value="<VOICEGATE_TOKEN>"/> to the <Stream>')
        fmt = start.get("mediaFormat")
        if not isinstance(fmt, dict):
            raise ProtocolError(WSCloseCode.INVALID_TEXT, "start.mediaFormat must be an object")
        if (fmt.get("encoding"), fmt.get("sampleRate"), fmt.get("channels", 1)) != ("audio/x-mulaw", 8000, 1):
            raise ProtocolError(WSCloseCode.UNSUPPORTED_DATA,
                                f"mediaFormat {fmt} unsupported: Media Streams send audio/x-mulaw, 8000 Hz, mono")
        self.stream_sid = sid

    async def _after_start(self, data: dict[str, Any]) -> bool:
        event = data["event"]
        if event == "media":
            media = data.get("media")
            payload = media.get("payload") if isinstance(media, dict) else None
            if not isinstance(payload, str):
                raise ProtocolError(WSCloseCode.INVALID_TEXT, "media.payload must be a base64 string")
            if media.get("track", "inbound") != "inbound":  # type: ignore[union-attr]
                return False  # only the caller's side is analysed
            try:
                audio = base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise ProtocolError(WSCloseCode.INVALID_TEXT, f"media.payload is not base64: {exc}") from exc
            await self._audio(audio)
            return False
        if event == "mark":
            mark = data.get("mark")
            name = mark.get("name") if isinstance(mark, dict) else None
            if not isinstance(name, str):
                raise ProtocolError(WSCloseCode.INVALID_TEXT, "mark.name must be a string")
            if name.startswith("pos:"):
                try:
                    self.played_ms = max(self.played_ms, float(name[4:]))
                except ValueError:
                    pass
            return False
        if event == "stop":
            return True
        if event == "dtmf":
            return False
        if event in ("start", "connected"):
            raise ProtocolError(WSCloseCode.POLICY_VIOLATION, f"{event!r} again: one stream per socket")
        raise ProtocolError(WSCloseCode.POLICY_VIOLATION, f"unknown Media Streams event {event!r}")

    async def _audio(self, data: bytes) -> None:
        await self.feed_audio(self.codec.decode(data))

    def stop_listening(self) -> None:
        """No more marks or clears: the stream is ending."""
        self.events.remove_listener(self._on_event)
