"""Server-side echo guard: is an inbound window the bot's own voice coming back?

The gate knows exactly what it played. Each outbound frame is kept (resampled to 16 kHz) for the last
``max_delay_ms``. Voiced speech correlates with *any* voiced speech at some lag (pitch pulses line up), so a high
correlation alone proves nothing; an echo is a high correlation *at a stable delay*. The guard locks onto a delay
once three of the last six windows agree on it (within ``lag_tolerance_ms``) with a correlation of at least
``lock_ncc``, and from then on scores windows only around that delay. Before a lock nothing is called echo: the
gate would rather pause for its own voice than ignore the user.
"""

from __future__ import annotations

import threading
from collections import deque

import numpy as np
from av import AudioFrame, AudioResampler

from voicegate.config import PIPELINE_SAMPLE_RATE


class EchoGuard:
    """Keeps the recent outbound signal and scores inbound windows against it."""

    def __init__(self, playout_sample_rate: int, max_delay_ms: float = 400.0, window_samples: int = 512,
                 lock_ncc: float = 0.7, lag_tolerance_ms: float = 30.0, lock_hold_ms: float = 4000.0) -> None:
        self.max_delay = int(PIPELINE_SAMPLE_RATE * max_delay_ms / 1000)
        self.window = window_samples
        self.lock_ncc = lock_ncc
        self.tolerance = int(PIPELINE_SAMPLE_RATE * lag_tolerance_ms / 1000)
        self.hold_windows = int(lock_hold_ms / (1000 * window_samples / PIPELINE_SAMPLE_RATE))
        self._ref = np.zeros(self.max_delay + window_samples, dtype=np.float32)
        self._lock = threading.Lock()
        self._rate = playout_sample_rate
        self._resampler = AudioResampler(format="s16", layout="mono", rate=PIPELINE_SAMPLE_RATE)
        self._nfft = 1 << int(np.ceil(np.log2(len(self._ref) + window_samples)))
        self._candidates: deque[tuple[int, float]] = deque(maxlen=6)
        self.locked_delay: int | None = None
        self._since_confirmed = 0

    def add_outbound(self, pcm: np.ndarray) -> None:
        """Record one outbound frame (at the playout rate) as it is sent."""
        if self._rate == PIPELINE_SAMPLE_RATE:
            data = pcm.astype(np.float32)
        else:
            frame = AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = self._rate
            parts = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
            if not parts:
                return
            data = np.concatenate(parts).astype(np.float32)
        with self._lock:
            n = min(len(data), len(self._ref))
            self._ref[:-n] = self._ref[n:]
            self._ref[-n:] = data[-n:]

    def _ncc(self, window: np.ndarray) -> np.ndarray | None:
        """Normalised cross-correlation per delay (index = delay in samples), None when either side is silent."""
        with self._lock:
            ref = self._ref.copy()
        w = window.astype(np.float32)
        w_energy = float(np.dot(w, w))
        n = len(w)
        if w_energy < 1e3 or float(np.dot(ref, ref)) < 1e3 * len(ref) / n:
            return None
        corr = np.fft.irfft(np.fft.rfft(ref, self._nfft) * np.conj(np.fft.rfft(w, self._nfft)), self._nfft)
        corr = corr[: len(ref) - n + 1]
        csum = np.concatenate([[0.0], np.cumsum(ref.astype(np.float64) ** 2)])
        seg_energy = csum[n:] - csum[:-n]
        ncc = np.abs(corr) / np.sqrt(np.maximum(seg_energy, 1.0) * w_energy)
        return ncc[::-1]  # index 0 = the newest reference = no delay

    def score(self, window: np.ndarray) -> float:
        """Correlation (0..1) of ``window`` with the outbound signal at the locked echo delay; 0 without a lock."""
        ncc = self._ncc(window)
        self._since_confirmed += 1
        if self.locked_delay is not None and self._since_confirmed > self.hold_windows:
            self.locked_delay = None
        if ncc is None:
            self._candidates.append((-1, 0.0))
            return 0.0
        delay = int(np.argmax(ncc))
        peak = float(ncc[delay])
        self._candidates.append((delay, peak))
        self._update_lock()
        if self.locked_delay is None:
            return 0.0
        lo, hi = max(0, self.locked_delay - self.tolerance), self.locked_delay + self.tolerance + 1
        return float(min(1.0, ncc[lo:hi].max()))

    def _update_lock(self) -> None:
        strong = [d for d, p in self._candidates if p >= self.lock_ncc and d >= 0]
        if len(strong) < 3:
            return
        median = int(np.median(strong))
        agreeing = [d for d in strong if abs(d - median) <= self.tolerance]
        if len(agreeing) >= 3:
            self.locked_delay = int(np.median(agreeing))
            self._since_confirmed = 0
