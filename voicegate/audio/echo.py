"""Server-side echo guard: is an inbound window the bot's own voice coming back?

The gate knows exactly what it played. Each outbound frame is kept (resampled to 16 kHz) for the last
``max_delay_ms``; an inbound window whose normalised cross-correlation with that reference, at any lag up to
``max_delay_ms``, exceeds a threshold is echo — speakerphone or missing browser AEC — and is not user speech.
"""

from __future__ import annotations

import threading

import numpy as np
from av import AudioFrame, AudioResampler

from voicegate.config import PIPELINE_SAMPLE_RATE


class EchoGuard:
    """Keeps the recent outbound signal and scores inbound windows against it."""

    def __init__(self, playout_sample_rate: int, max_delay_ms: float = 400.0, window_samples: int = 512) -> None:
        self.max_delay = int(PIPELINE_SAMPLE_RATE * max_delay_ms / 1000)
        self.window = window_samples
        self._ref = np.zeros(self.max_delay + window_samples, dtype=np.float32)
        self._lock = threading.Lock()
        self._rate = playout_sample_rate
        self._resampler = AudioResampler(format="s16", layout="mono", rate=PIPELINE_SAMPLE_RATE)
        self._nfft = 1 << int(np.ceil(np.log2(len(self._ref) + window_samples)))

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

    def score(self, window: np.ndarray) -> float:
        """Peak normalised cross-correlation (0..1) of ``window`` with the outbound signal of the last
        ``max_delay_ms``; 0 when the bot has been silent."""
        with self._lock:
            ref = self._ref.copy()
        w = window.astype(np.float32)
        w_energy = float(np.dot(w, w))
        if w_energy < 1e3 or float(np.dot(ref, ref)) < 1e3 * len(ref) / len(w):
            return 0.0
        n = len(w)
        corr = np.fft.irfft(np.fft.rfft(ref, self._nfft) * np.conj(np.fft.rfft(w, self._nfft)), self._nfft)
        corr = corr[: len(ref) - n + 1]
        csum = np.concatenate([[0.0], np.cumsum(ref.astype(np.float64) ** 2)])
        seg_energy = csum[n:] - csum[:-n]
        ncc = np.abs(corr) / (np.sqrt(np.maximum(seg_energy, 1.0) * w_energy))
        return float(min(1.0, ncc.max()))
