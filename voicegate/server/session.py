"""A WebRTC call: the call core (:class:`~voicegate.call.CallCore`) carried by an aiortc peer connection."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaBlackhole
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcdatachannel import RTCDataChannel

from voicegate.call.core import CallCore
from voicegate.config import Options
from voicegate.media.inbound import InboundAudio, shorten_jitter_buffer
from voicegate.media.opus import EncodedPlayout, libopus

log = logging.getLogger(__name__)


class Session(CallCore):
    """Everything one WebRTC caller owns; :meth:`close` releases all of it (idempotent)."""

    transport = "webrtc"
    playout_sample_rate = 48_000
    """Opus's own rate: aiortc's encoder resamples any other rate with ``frame_size=960``, and that resampler holds
    back part of every frame, so each packet would carry mostly the previous 20 ms (a pause heard 20 ms later)."""

    def __init__(self, options: Options, on_closed: Callable[[CallCore], None] | None = None,
                 call_id: str | None = None) -> None:
        super().__init__(options, on_closed, call_id)
        ice = [RTCIceServer(urls=url) for url in options.server.ice_servers]
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=ice))
        self.inbound: InboundAudio | None = None
        self.outbound = EncodedPlayout(self.playout, self.playout.sample_rate)
        """What the peer connection sends: the playout track's frames as Opus packets."""
        self._blackholes: list[MediaBlackhole] = []
        self._channels: list[RTCDataChannel] = []
        self.pc.on("track", self._on_track)
        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("connectionstatechange", self._on_connection_state)

    async def accept(self, offer_sdp: str) -> RTCSessionDescription:
        """Apply the caller's offer and return the complete answer (ICE candidates included)."""
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        await self.open()
        self.pc.addTrack(self.outbound)
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        for transceiver in self.pc.getTransceivers():
            if transceiver.sender.track is self.outbound:
                codecs = getattr(transceiver, "_codecs", [])
                # Opus negotiated (every browser): encoded here, mono, by libopus; anything else by aiortc.
                self.outbound.opus = bool(codecs) and codecs[0].mimeType.lower() == "audio/opus" \
                    and libopus() is not None
        return self.pc.localDescription

    # -- peer connection events -------------------------------------------------------------------------------

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and self.inbound is None:
            self.inbound = InboundAudio(track, self.clock)
            for receiver in self.pc.getReceivers():
                if receiver.track is track:
                    # Opus is decoded to 16 kHz mono as each packet arrives and pushed straight to the gate.
                    shorten_jitter_buffer(receiver, self.options.server.inbound_jitter_frames, self.inbound.push)
            self.tasks.spawn(self.inbound.run(), "inbound")
            self.tasks.spawn(self._consume(self.inbound), "gate")
        else:
            # Every remote track needs a reader, or aiortc buffers its frames without bound.
            hole = MediaBlackhole()
            hole.addTrack(track)
            self._blackholes.append(hole)
            self.tasks.spawn(hole.start(), f"blackhole-{track.kind}")

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if channel.label != "events":
            return
        self._channels.append(channel)

        def send(event: dict[str, Any]) -> None:
            if channel.readyState == "open":
                channel.send(json.dumps(event))

        if channel.readyState == "open":
            self.events.add_listener(send, replay=True)
        else:
            channel.on("open", lambda: self.events.add_listener(send, replay=True))
        channel.on("close", lambda: self.events.remove_listener(send))

    async def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        log.info("call=%s connection %s", self.call_id, state)
        if state == "connected":
            self.connected()
        elif state in ("failed", "closed"):
            await self.close(reason=f"connection_{state}")

    async def _consume(self, inbound: InboundAudio) -> None:
        async for chunk in inbound:
            await self.feed(chunk.pcm, chunk.received_ms)

    async def close_transport(self) -> None:
        """Stop the extra tracks' readers and close the peer connection."""
        for hole in self._blackholes:
            await hole.stop()
        await self.pc.close()
