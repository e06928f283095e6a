"""PCM helpers: resampling with ``av``, decoding files, levels in dBFS."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
from av import AudioFrame, AudioResampler


def resample(pcm: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample mono s16 ``pcm`` from ``from_rate`` to ``to_rate`` with ``av.AudioResampler`` (one shot)."""
    data = np.ascontiguousarray(pcm, dtype=np.int16).reshape(-1)
    if from_rate == to_rate or not data.size:
        return data.copy()
    frame = AudioFrame.from_ndarray(data.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = from_rate
    resampler = AudioResampler(format="s16", layout="mono", rate=to_rate)
    parts = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    parts += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(parts).astype(np.int16) if parts else np.zeros(0, dtype=np.int16)


class StreamResampler:
    """Resamples a mono s16 stream chunk by chunk, keeping pace with it from the first chunk.

    ``av.AudioResampler`` holds back its filter's delay (16 samples of every 20 ms going 48 → 16 kHz). A consumer
    that cuts the output into 20 ms frames would then wait for the next chunk to complete each frame: 20 ms of
    latency for 1 ms of filter. So the first output is padded with that much silence, once, and from then on
    every chunk in gives the same duration out.
    """

    def __init__(self, from_rate: int, to_rate: int) -> None:
        self.from_rate = from_rate
        self.to_rate = to_rate
        self._resampler = AudioResampler(format="s16", layout="mono", rate=to_rate)
        self._primed = False

    def __call__(self, pcm: np.ndarray) -> np.ndarray:
        """Resample one chunk (s16 at ``from_rate``) to s16 at ``to_rate``."""
        if self.from_rate == self.to_rate or not len(pcm):
            return pcm
        frame = AudioFrame.from_ndarray(np.ascontiguousarray(pcm, dtype=np.int16).reshape(1, -1), format="s16",
                                        layout="mono")
        frame.sample_rate = self.from_rate
        parts = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        out = np.concatenate(parts).astype(np.int16) if parts else np.zeros(0, dtype=np.int16)
        if not self._primed:
            self._primed = True
            missing = len(pcm) * self.to_rate // self.from_rate - len(out)
            if missing > 0:
                out = np.concatenate([np.zeros(missing, dtype=np.int16), out])
        return out


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Decode any file ``av`` can read (wav/ogg/flac/mp3) into mono s16 at ``sample_rate``."""
    resampler = AudioResampler(format="s16", layout="mono", rate=sample_rate)
    parts: list[np.ndarray] = []
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            frame.pts = None
            parts += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    parts += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(parts).astype(np.int16) if parts else np.zeros(0, dtype=np.int16)


def dbfs(pcm: np.ndarray) -> float:
    """RMS level of s16 ``pcm`` in dB relative to full scale (−120 for silence)."""
    if not len(pcm):
        return -120.0
    rms = float(np.sqrt(np.mean(np.square(pcm.astype(np.float32) / 32768.0))))
    return 20.0 * float(np.log10(max(rms, 1e-6)))


def gain(pcm: np.ndarray, gain_db: float) -> np.ndarray:
    """Scale s16 ``pcm`` by ``gain_db`` with clipping."""
    scaled = pcm.astype(np.float32) * (10.0 ** (gain_db / 20.0))
    return np.clip(scaled, -32768, 32767).astype(np.int16)


_MULAW_BIAS = 0x84
_MULAW_CLIP = 32635


def _mulaw_decode_table() -> np.ndarray:
    codes = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = (((mantissa << 3) + _MULAW_BIAS) << exponent) - _MULAW_BIAS
    return np.where(sign != 0, -magnitude, magnitude).astype(np.int16)


_MULAW_TO_PCM = _mulaw_decode_table()


def mulaw_decode(data: bytes) -> np.ndarray:
    """G.711 μ-law bytes → s16 samples (the telephone network's 8-bit encoding)."""
    return _MULAW_TO_PCM[np.frombuffer(data, dtype=np.uint8)]


def mulaw_encode(pcm: np.ndarray) -> bytes:
    """s16 samples → G.711 μ-law bytes."""
    x = pcm.astype(np.int32)
    sign = np.where(x < 0, 0x80, 0)
    magnitude = np.minimum(np.abs(x), _MULAW_CLIP) + _MULAW_BIAS
    exponent = np.clip(np.floor(np.log2(np.maximum(magnitude, 1))).astype(np.int32) - 7, 0, 7)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes()
