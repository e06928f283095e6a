"""Echo cancellation before the detectors: subtract the bot's own voice from the microphone.

The canceller is WebRTC's audio processing module (the echo canceller browsers used for years: an adaptive filter
with an extended tail, delay-agnostic alignment and non-linear suppression of the residue), from Debian's
``libwebrtc-audio-processing`` through a 60-line C shim (``vg_aec.cpp``, built by ``make install``) and ctypes.
Measured before choosing it (``docs/echo.md``): libspeexdsp's MDF reached ≈ 20 dB only after 2 s and exposes no
adaptation control; a hand-written partitioned-block NLMS converged as slowly; the WebRTC binding on PyPI
(``aec-audio-processing``) downloads its subprojects at build time, which CI cannot.

WebRTC's delay-agnostic mode finds the echo within ≈ 130 ms on its own. Longer paths (phones, Bluetooth, TURN) are
brought into that range by :class:`DelayEstimator`: a time-averaged GCC-PHAT between the microphone and what was
played, which holds its peak through reverberation and codecs where a per-window correlation does not. The far end
is fed that much later (minus a margin), so the canceller only ever has a short delay left to find.

Double talk: WebRTC's canceller freezes its own adaptation when the near end is active (its coherence-based
detector); the gate checks the outcome — echo return loss enhancement (ERLE) stays high across double talk (tests).
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import numpy as np

from voicegate.config import PIPELINE_SAMPLE_RATE

log = logging.getLogger(__name__)

LIBRARY = Path(__file__).with_name("_vg_aec.so")
BLOCK_SAMPLES = PIPELINE_SAMPLE_RATE // 100
"""WebRTC processes 10 ms frames."""
OUTPUT_DELAY_SAMPLES = 112
"""The module's own processing delay at 16 kHz (its band-split filters): the cleaned signal lags the raw one by
this much (measured by cross-correlation; ``tests/test_aec.py``)."""
MAX_LAG_SAMPLES = int(0.5 * PIPELINE_SAMPLE_RATE)
AGNOSTIC_RANGE_SAMPLES = int(0.06 * PIPELINE_SAMPLE_RATE)
"""Far-end pre-delay leaves this much of the echo delay for WebRTC's own estimator to find."""
MIN_TRACKED_BLOCKS = 50
"""ERLE is believed after half a second of the bot being heard (the first blocks' ratio is noise)."""
AUDIBLE_HOLD_BLOCKS = 60
"""The echo of what was played can still arrive this long (600 ms) after it was played."""
_lib: ctypes.CDLL | None = None
_load_error: str | None = None


def _library() -> ctypes.CDLL | None:
    """The shim, loaded once; None (with the reason in :func:`unavailable_reason`) when it is not built."""
    global _lib, _load_error
    if _lib is not None or _load_error is not None:
        return _lib
    try:
        lib = ctypes.CDLL(str(LIBRARY))
    except OSError as exc:
        _load_error = (f"{LIBRARY.name} not loadable ({exc}): run `make install` (it builds the echo canceller "
                       "against Debian's libwebrtc-audio-processing-dev)")
        log.warning("echo cancellation off: %s", _load_error)
        return None
    lib.vg_aec_create.restype = ctypes.c_void_p
    lib.vg_aec_create.argtypes = [ctypes.c_int] * 4
    lib.vg_aec_far.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
    lib.vg_aec_near.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    lib.vg_aec_destroy.argtypes = [ctypes.c_void_p]
    _lib = lib
    return lib


def unavailable_reason() -> str | None:
    """Why echo cancellation cannot run here (None when it can)."""
    return None if _library() is not None else _load_error


MIN_PEAK = 6.0
"""GCC peak over the RMS of the correlation below which an update says nothing."""
AGREE_SAMPLES = 400
AGREEING_UPDATES = 2
"""An echo delay is believed when two clear updates in a row agree within 25 ms (early reflections move the peak
by that much; the earlier one is taken)."""


class DelayEstimator:
    """Where the played signal comes back in the microphone: a time-averaged GCC-PHAT over the last 256 ms,
    updated every 128 ms while the bot is audible. ``delay`` is the peak lag (samples) once two updates in a row
    agree within 25 ms with a clear peak. A user's words can fool it (they correlate with the bot's at some lag),
    which is why cancellation is for calls that do carry echo (``GateOptions.echo_cancel``)."""

    def __init__(self, segment: int = 4096, hop: int = 2048, smoothing: float = 0.7) -> None:
        self.segment = segment
        self.hop = hop
        self.smoothing = smoothing
        self._nfft = 1 << int(np.ceil(np.log2(segment + MAX_LAG_SAMPLES)))
        self._mic = np.zeros(segment, np.float32)
        self._ref = np.zeros(segment + MAX_LAG_SAMPLES, np.float32)
        self._cross: np.ndarray | None = None
        self._since = 0
        self._agreeing: list[int] = []
        self.delay: int | None = None

    def feed(self, mic: np.ndarray, ref: np.ndarray) -> None:
        """Add one block of microphone and of reference (the reference sample that ends with the microphone's)."""
        n = len(mic)
        self._mic = np.concatenate([self._mic[n:], mic])
        self._ref = np.concatenate([self._ref[n:], ref])
        self._since += n
        if self._since < self.hop:
            return
        self._since = 0
        if float(np.mean(self._ref[-self.segment:] ** 2)) < 1e4 or float(np.mean(self._mic ** 2)) < 1e3:
            return  # the bot is silent, or nothing comes back: nothing to learn from
        x = np.fft.rfft(self._ref, self._nfft)
        y = np.fft.rfft(self._mic, self._nfft)
        cross = y * np.conj(x)
        cross /= np.abs(cross) ** 0.8 + 1e-9
        self._cross = cross if self._cross is None else self.smoothing * self._cross + (1 - self.smoothing) * cross
        corr = np.fft.irfft(self._cross, self._nfft)
        # values[d]: the microphone against the reference d samples earlier
        values = corr[(np.arange(MAX_LAG_SAMPLES + 1) - MAX_LAG_SAMPLES) % self._nfft]
        lag = int(np.argmax(values))
        peak = float(values[lag] / (np.sqrt(np.mean(values ** 2)) + 1e-12))
        if peak < MIN_PEAK:
            self._agreeing = []
            return
        self._agreeing = [d for d in self._agreeing[-(AGREEING_UPDATES - 1):] if abs(d - lag) <= AGREE_SAMPLES] + [lag]
        if len(self._agreeing) >= AGREEING_UPDATES:
            self.delay = min(self._agreeing)


class EchoCanceller:
    """One call's canceller. :meth:`process` takes 10 ms blocks of microphone and of reference on the same
    timeline; it is blocking and runs on the call's gate thread."""

    n = BLOCK_SAMPLES

    def __init__(self) -> None:
        lib = _library()
        if lib is None:
            raise RuntimeError(unavailable_reason())
        self._lib = lib
        self._handle: int | None = None
        self.estimator = DelayEstimator()
        self.delay = 0
        """Samples by which the far end is fed late (so the echo left to find is within WebRTC's range)."""
        self._far = np.zeros(MAX_LAG_SAMPLES + BLOCK_SAMPLES, np.float32)
        self._raw_power = 0.0
        self._clean_power = 0.0
        self.erle_db = 0.0
        """Smoothed echo return loss enhancement while only the bot is heard (dB)."""
        self.failed = False
        self.resets = 0
        self._worse = 0
        self._established = False
        self._create()

    def _create(self) -> None:
        if self._handle is not None:
            self._lib.vg_aec_destroy(self._handle)
        # delay-agnostic, extended filter, *low* suppression of the residue: high suppression removes a few dB more
        # echo but also 12 dB of a user talking over it (measured: docs/echo.md)
        self._handle = self._lib.vg_aec_create(PIPELINE_SAMPLE_RATE, 1, 1, 0)
        if not self._handle:
            self.failed = True
            raise RuntimeError("WebRTC's audio processing module could not be created")
        self._raw_power = self._clean_power = 0.0
        self.erle_db = 0.0
        self._established = False
        self._audible_blocks = 0
        self._tracked = 0

    def close(self) -> None:
        """Release the native state (idempotent)."""
        if self._handle is not None:
            self._lib.vg_aec_destroy(self._handle)
            self._handle = None

    def __del__(self) -> None:
        self.close()

    @property
    def settling(self) -> bool:
        """The bot has been audible recently and the canceller has not yet learned the echo path."""
        if self.failed or self._established or not self._audible_blocks:
            return False
        # Early on anything may be echo; later only while there is an echo to learn (with headphones or a
        # browser's own echo cancellation nothing comes back, and nothing is ever "learned").
        return self._tracked < MIN_TRACKED_BLOCKS or self.estimator.delay is not None

    @property
    def converged(self) -> bool:
        """The canceller removes at least 10 dB of echo."""
        return not self.failed and self.erle_db >= 10.0

    def process(self, mic: np.ndarray, ref: np.ndarray, near_end: bool) -> np.ndarray:
        """Cancel the reference from one 10 ms microphone block; returns the cleaned block (lagging the input by
        :data:`OUTPUT_DELAY_SAMPLES`). ``ref`` ends at the same instant as ``mic``."""
        if self._handle is None:  # closed: the call is ending
            return np.clip(mic, -32768, 32767).astype(np.int16)
        if not self._established:
            self.estimator.feed(mic, ref)  # once the canceller works, its own alignment follows small drifts
        self._far = np.concatenate([self._far[len(ref):], ref])
        self._follow_delay()
        start = len(self._far) - self.delay - BLOCK_SAMPLES
        far = np.ascontiguousarray(np.clip(self._far[start:start + BLOCK_SAMPLES], -32768, 32767).astype(np.int16))
        near = np.ascontiguousarray(np.clip(mic, -32768, 32767).astype(np.int16))
        raw_power = float(np.mean(mic.astype(np.float64) ** 2))
        self._lib.vg_aec_far(self._handle, far.ctypes.data, BLOCK_SAMPLES)
        self._lib.vg_aec_near(self._handle, near.ctypes.data, BLOCK_SAMPLES, 0)
        self._track(raw_power, float(np.mean(near.astype(np.float64) ** 2)), ref, near_end)
        return near

    def _follow_delay(self) -> None:
        found = self.estimator.delay
        if found is None or self.converged:
            return  # a working canceller is left alone: re-aligning means re-converging
        if not (self.delay <= found <= self.delay + 2 * AGNOSTIC_RANGE_SAMPLES):
            self.delay = max(0, found - AGNOSTIC_RANGE_SAMPLES)
            self.resets += 1
            self._create()

    def _track(self, raw_power: float, clean_power: float, ref: np.ndarray, near_end: bool) -> None:
        audible = float(np.mean(ref.astype(np.float64) ** 2)) >= 1e4
        self._audible_blocks = AUDIBLE_HOLD_BLOCKS if audible else max(0, self._audible_blocks - 1)
        if self.estimator.delay is None:
            return  # no echo found (yet): a quieter output now would be a user's word suppressed, not echo removed
        if not audible or (near_end and self._established):
            # ERLE is measured while only the bot is heard. Until it has once reached 10 dB, "the user is
            # speaking" may be the uncancelled echo itself, so that flag is not trusted yet.
            return
        block_db = 10.0 * float(np.log10((raw_power + 1.0) / (clean_power + 1.0)))
        if self._established and block_db < self.erle_db - 10.0:
            return  # far less removed than usual: someone is talking over the echo, not a worse canceller
        self._raw_power = 0.95 * self._raw_power + 0.05 * raw_power
        self._clean_power = 0.95 * self._clean_power + 0.05 * clean_power
        self.erle_db = 10.0 * float(np.log10((self._raw_power + 1.0) / (self._clean_power + 1.0)))
        self._tracked += 1
        self._established = self._established or (self.erle_db >= 10.0 and self._tracked >= MIN_TRACKED_BLOCKS)
        self._worse = self._worse + 1 if self.erle_db < -3.0 else 0
        if self._worse * BLOCK_SAMPLES >= PIPELINE_SAMPLE_RATE:  # louder out than in for a second: give up
            self.failed = True
            log.warning("echo canceller made the signal louder for 1 s: falling back to the echo guard")
