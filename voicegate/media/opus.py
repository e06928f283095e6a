"""Opus through libopus (ctypes) for a WebRTC call: the caller's audio decoded straight to 16 kHz mono, the
bot's encoded mono, both without aiortc's codec plumbing.

- In: aiortc decodes every inbound Opus packet to 48 kHz *stereo* (PyAV's libopus wrapper always outputs 48 kHz)
  in a thread per call, hops each frame back to the event loop, and the server then resamples it to 16 kHz mono.
  libopus itself decodes at 16 kHz mono (:class:`OpusDecoder`): a third of the work and no resampler.
- Out: aiortc upmixes each 20 ms of the bot's (mono) voice to stereo, encodes it in an executor thread and, on the
  event loop, computes the RTP audio level in pure Python (960 samples one by one). :class:`EncodedPlayout` hands
  aiortc ready Opus packets instead (mono, same 96 kbit/s), which it only packetizes.

The library is the system's ``libopus.so.0`` or, failing that, the copy inside PyAV's wheel (aiortc needs PyAV, so
one of the two is always there).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fractions
import functools
import glob
import logging
import os
from typing import Any

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from voicegate.media.playout import PlayoutTrack

log = logging.getLogger(__name__)

MAX_FRAME_SECS = 0.12
"""The longest Opus packet (120 ms)."""


@functools.cache
def libopus() -> ctypes.CDLL | None:
    """The libopus shared library with the decoder's signatures set, or None when none can be loaded."""
    candidates = [ctypes.util.find_library("opus"), "libopus.so.0"]
    try:
        import av

        libs = os.path.join(os.path.dirname(os.path.dirname(av.__file__)), "av.libs")
        candidates += sorted(glob.glob(os.path.join(libs, "libopus*.so*")))
    except ImportError:
        pass
    for name in candidates:
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        lib.opus_decoder_create.restype = ctypes.c_void_p
        lib.opus_decoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
        lib.opus_decode.restype = ctypes.c_int
        lib.opus_decode.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32, ctypes.c_void_p, ctypes.c_int,
                                    ctypes.c_int]
        lib.opus_decoder_destroy.restype = None
        lib.opus_decoder_destroy.argtypes = [ctypes.c_void_p]
        lib.opus_encoder_create.restype = ctypes.c_void_p
        lib.opus_encoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
        lib.opus_encode.restype = ctypes.c_int32
        lib.opus_encode.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int32]
        lib.opus_encoder_ctl.restype = ctypes.c_int
        lib.opus_encoder_destroy.restype = None
        lib.opus_encoder_destroy.argtypes = [ctypes.c_void_p]
        return lib
    log.warning("libopus not found: inbound Opus is decoded by aiortc at 48 kHz and resampled")
    return None


class OpusDecoder:
    """One stream's libopus decoder at ``sample_rate`` (8000, 12000, 16000, 24000 or 48000 Hz), mono s16."""

    def __init__(self, sample_rate: int = 16_000) -> None:
        lib = libopus()
        if lib is None:
            raise OSError("libopus is not available")
        self._lib = lib
        self.sample_rate = sample_rate
        error = ctypes.c_int(0)
        self._state = lib.opus_decoder_create(sample_rate, 1, ctypes.byref(error))
        if error.value != 0 or not self._state:
            raise OSError(f"opus_decoder_create failed ({error.value})")
        self._buffer = np.zeros(int(sample_rate * MAX_FRAME_SECS), dtype=np.int16)
        self._pointer = self._buffer.ctypes.data

    def decode(self, packet: bytes) -> np.ndarray:
        """One Opus packet → its samples (a copy); an empty packet conceals one lost 20 ms frame."""
        if self._state is None:
            raise ValueError("decoder closed")
        if packet:
            n = self._lib.opus_decode(self._state, packet, len(packet), self._pointer, len(self._buffer), 0)
        else:
            n = self._lib.opus_decode(self._state, None, 0, self._pointer, self.sample_rate // 50, 0)
        if n < 0:
            raise ValueError(f"opus_decode failed ({n}) on a {len(packet)}-byte packet")
        return self._buffer[:n].copy()

    def close(self) -> None:
        """Free the decoder (idempotent)."""
        if self._state is not None:
            self._lib.opus_decoder_destroy(self._state)
            self._state = None

    def __del__(self) -> None:
        self.close()


_APPLICATION_VOIP = 2048
_SET_BITRATE = 4002
_SET_COMPLEXITY = 4010
MAX_PACKET_BYTES = 4000


class OpusEncoder:
    """One stream's libopus encoder: mono s16 at ``sample_rate`` in, one Opus packet per frame out."""

    def __init__(self, sample_rate: int = 48_000, bitrate: int = 96_000) -> None:
        lib = libopus()
        if lib is None:
            raise OSError("libopus is not available")
        self._lib = lib
        self.sample_rate = sample_rate
        error = ctypes.c_int(0)
        self._state = lib.opus_encoder_create(sample_rate, 1, _APPLICATION_VOIP, ctypes.byref(error))
        if error.value != 0 or not self._state:
            raise OSError(f"opus_encoder_create failed ({error.value})")
        lib.opus_encoder_ctl(ctypes.c_void_p(self._state), _SET_BITRATE, ctypes.c_int(bitrate))
        lib.opus_encoder_ctl(ctypes.c_void_p(self._state), _SET_COMPLEXITY, ctypes.c_int(10))
        self._out = ctypes.create_string_buffer(MAX_PACKET_BYTES)

    def encode(self, pcm: np.ndarray) -> bytes:
        """One frame (2.5–60 ms of mono s16) → one Opus packet."""
        if self._state is None:
            raise ValueError("encoder closed")
        data = np.ascontiguousarray(pcm, dtype=np.int16)
        n = self._lib.opus_encode(self._state, data.ctypes.data, len(data), self._out, MAX_PACKET_BYTES)
        if n < 0:
            raise ValueError(f"opus_encode failed ({n}) on {len(data)} samples")
        return self._out.raw[:n]

    def close(self) -> None:
        """Free the encoder (idempotent)."""
        if self._state is not None:
            self._lib.opus_encoder_destroy(self._state)
            self._state = None

    def __del__(self) -> None:
        self.close()


class EncodedPlayout(MediaStreamTrack):
    """The bot's voice as Opus packets: reads a 48 kHz playout track and returns ``av.Packet`` s, which aiortc's
    sender packetizes as they are (no stereo upmix, no executor hop, no per-sample audio level in Python).

    Until :attr:`opus` is set True (the call negotiated Opus) frames pass through unchanged, for aiortc to encode.
    Stopping this track stops the source.
    """

    kind = "audio"

    def __init__(self, source: PlayoutTrack, sample_rate: int = 48_000) -> None:
        super().__init__()
        self.source = source
        self.opus = False
        self._encoder: OpusEncoder | None = None
        self._sample_rate = sample_rate
        self._time_base = fractions.Fraction(1, sample_rate)

    async def recv(self) -> Any:
        """The next frame, encoded once Opus is negotiated."""
        if self.readyState != "live":
            raise MediaStreamError
        if not self.opus or self.source.sample_rate != self._sample_rate:
            return await self.source.recv()
        pcm = await self.source.recv_pcm()
        if self._encoder is None:
            self._encoder = OpusEncoder(self._sample_rate)
        packet = av.Packet(self._encoder.encode(pcm))
        packet.pts = self.source.pts
        packet.time_base = self._time_base
        return packet

    def stop(self) -> None:
        """Stop this track and its source; free the encoder."""
        super().stop()
        self.source.stop()
        if self._encoder is not None:
            self._encoder.close()
