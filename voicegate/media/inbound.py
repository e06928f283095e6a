"""The inbound path: the one consumer of a remote audio track, as 16 kHz mono s16.

Opus (what every WebRTC caller sends) is decoded straight to 16 kHz mono by libopus as each packet arrives
(:class:`DecodingJitterBuffer`); any other codec, or Opus when libopus cannot be loaded, goes through aiortc's
decoder (48 kHz stereo for Opus) and is resampled here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import numpy as np
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import RtpPacket
from av import AudioFrame, AudioResampler

from voicegate.config import PIPELINE_SAMPLE_RATE
from voicegate.events import MediaClock
from voicegate.media.opus import OpusDecoder, libopus

log = logging.getLogger(__name__)


class ImmediateJitterBuffer:
    """An audio jitter buffer that hands every packet on as it arrives.

    aiortc's :class:`~aiortc.jitterbuffer.JitterBuffer` knows a frame is complete only when a packet of the next
    one arrives, so even with ``prefetch=0`` each 20 ms of audio waits for the next packet. An Opus packet *is* a
    frame: it can be decoded at once. Packets older than one already handed on (reordered or duplicated) are
    dropped — the gate analyses the audio rather than playing it, and a late packet is worth less to it than 20 ms.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._last: int | None = None
        self.dropped = 0

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        """``(pli_flag, frame)`` as aiortc's receiver expects; the frame is this packet, unless it is late."""
        seq = packet.sequence_number
        if self._last is not None and not 0 < (seq - self._last) % 65536 < 32768:
            self.dropped += 1
            return False, None
        self._last = seq
        return False, JitterFrame(data=packet._data, timestamp=packet.timestamp)  # type: ignore[attr-defined]


class DecodingJitterBuffer(ImmediateJitterBuffer):
    """:class:`ImmediateJitterBuffer` that decodes Opus itself, at 16 kHz mono (libopus), and hands the samples
    to ``sink(pcm, rtp_timestamp)`` on the event loop as each packet arrives (≈ 20 µs a packet).

    aiortc's decoder thread then never sees an Opus packet: no 48 kHz stereo decode, no thread hop per frame, no
    resampler. A packet of another codec (the offer may negotiate G.711) is handed on to aiortc as before.
    """

    def __init__(self, capacity: int, receiver: object, sink: Callable[[np.ndarray, int], None]) -> None:
        super().__init__(capacity)
        self._receiver = receiver
        self._sink = sink
        self._decoder: OpusDecoder | None = None
        self.decode_errors = 0

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        """Decode an Opus packet into the sink (nothing for aiortc); hand anything else on."""
        pli, frame = super().add(packet)
        if frame is None:
            return pli, None
        codecs = getattr(self._receiver, "_RTCRtpReceiver__codecs", {})
        codec = codecs.get(packet.payload_type)
        if codec is None or codec.mimeType.lower() != "audio/opus":
            return pli, frame
        if self._decoder is None:
            self._decoder = OpusDecoder(PIPELINE_SAMPLE_RATE)
        try:
            pcm = self._decoder.decode(frame.data)
        except ValueError as exc:
            self.decode_errors += 1
            log.debug("dropped an inbound Opus packet: %s", exc)
            return False, None
        self._sink(pcm, frame.timestamp)
        return False, None

    def close(self) -> None:
        """Free the decoder."""
        if self._decoder is not None:
            self._decoder.close()


def shorten_jitter_buffer(receiver: object, frames: int,
                          sink: Callable[[np.ndarray, int], None] | None = None) -> bool:
    """Make an aiortc audio receiver hand each packet on after ``frames`` newer ones (aiortc's default is 4, i.e.
    80 ms added to every packet before anyone hears it); with ``frames=0`` each packet is handed on as it arrives
    (:class:`ImmediateJitterBuffer`).

    aiortc 1.16 has no option for this, so the receiver's jitter buffer is replaced before media flows. The gate
    analyses this audio rather than playing it, so a late or reordered packet costs at most one 20 ms window.
    With ``frames=0`` and a ``sink``, Opus packets are also decoded here at 16 kHz mono and handed to ``sink``
    (:class:`DecodingJitterBuffer`) when libopus can be loaded. Returns False (and changes nothing) when the
    receiver does not look as expected.
    """
    name = "_RTCRtpReceiver__jitter_buffer"
    current = getattr(receiver, name, None)
    if not isinstance(current, JitterBuffer) or getattr(current, "_is_video", True):
        log.warning("cannot shorten the inbound jitter buffer of %r: aiortc changed; keeping its default", receiver)
        return False
    buffer: ImmediateJitterBuffer | JitterBuffer
    if frames <= 0 and sink is not None and libopus() is not None:
        buffer = DecodingJitterBuffer(current.capacity, receiver, sink)
    elif frames <= 0:
        buffer = ImmediateJitterBuffer(current.capacity)
    else:
        buffer = JitterBuffer(capacity=current.capacity, prefetch=frames)
    setattr(receiver, name, buffer)
    return True


@dataclass(frozen=True)
class PcmChunk:
    """A piece of the caller's audio at 16 kHz mono s16."""

    pcm: np.ndarray
    pts_samples: int
    """Timestamp of the first sample in 16 kHz samples, carried over from the RTP timestamp."""
    received_ms: float
    """Media time at which the frame arrived."""


class InboundAudio:
    """Reads one remote audio track, resamples each frame with ``av.AudioResampler`` and buffers a bounded queue;
    or takes 16 kHz samples decoded as they arrived (:meth:`push`; the track is then read only to see it end).

    Iterate with ``async for chunk in inbound`` (exactly one consumer). When the consumer falls behind by more
    than ``max_buffered_ms`` the oldest chunks are dropped and counted in :attr:`dropped_chunks`.
    """

    def __init__(self, track: MediaStreamTrack, clock: MediaClock, max_buffered_ms: int = 1000) -> None:
        self.track = track
        self.clock = clock
        self.sample_rate = PIPELINE_SAMPLE_RATE
        self._resampler = AudioResampler(format="s16", layout="mono", rate=self.sample_rate)
        self._queue: asyncio.Queue[PcmChunk | None] = asyncio.Queue(maxsize=max(1, max_buffered_ms // 20))
        self.received_samples = 0
        self.dropped_chunks = 0
        self._ended = False
        self._first_timestamp: int | None = None

    def resample(self, frame: AudioFrame) -> list[PcmChunk]:
        """Convert one decoded frame (any rate/layout) into 16 kHz mono chunks, keeping its timestamp."""
        now_ms = self.clock.now_ms()
        chunks = []
        for out in self._resampler.resample(frame):
            pcm = out.to_ndarray().reshape(-1).astype(np.int16, copy=False)
            pts = int(out.pts) if out.pts is not None else self.received_samples
            chunks.append(PcmChunk(pcm, pts, now_ms))
        return chunks

    def push(self, pcm: np.ndarray, rtp_timestamp: int) -> None:
        """Samples already at 16 kHz mono (decoded as the packet arrived, :class:`DecodingJitterBuffer`)."""
        if self._ended:
            return
        if self._first_timestamp is None:
            self._first_timestamp = rtp_timestamp
        pts = ((rtp_timestamp - self._first_timestamp) % 2**32) // (48_000 // self.sample_rate)
        self.received_samples += len(pcm)
        self._put(PcmChunk(pcm, pts, self.clock.now_ms()))

    def _put(self, item: PcmChunk | None) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped_chunks += 1
        self._queue.put_nowait(item)

    async def run(self) -> None:
        """Pull frames until the track ends; run this as the track's only reader."""
        try:
            while True:
                frame = await self.track.recv()
                for chunk in self.resample(frame):  # type: ignore[arg-type]
                    self.received_samples += len(chunk.pcm)
                    self._put(chunk)
        except MediaStreamError:
            log.debug("inbound track ended after %d samples", self.received_samples)
        finally:
            self._ended = True
            self._put(None)

    def __aiter__(self) -> AsyncIterator[PcmChunk]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[PcmChunk]:
        while True:
            chunk = await self._queue.get()
            if chunk is None:
                return
            yield chunk
