"""Opus decoded straight to the pipeline's 16 kHz mono by libopus (ctypes), without aiortc's decoder thread.

aiortc decodes every inbound Opus packet to 48 kHz *stereo* (PyAV's libopus wrapper always outputs 48 kHz) in a
thread per call, hops each frame back to the event loop, and the server then resamples it to 16 kHz mono. libopus
itself decodes at 8/12/16/24/48 kHz and to mono, which is about a third of the work of the 48 kHz stereo decode
and needs no resampler. The library is the system's ``libopus.so.0`` or, failing that, the copy inside PyAV's
wheel (aiortc needs PyAV, so one of the two is always there).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import glob
import logging
import os

import numpy as np

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
