"""A simulated loudspeaker-to-microphone path: the bot's own voice coming back, as a phone or a laptop returns it.

The bot's audio, frame by frame as it is really played, goes through a room impulse response (a direct path, early
reflections and an exponentially decaying diffuse tail with the given RT60), a codec round trip (8 kHz μ-law as on
a phone line, or Opus as on WebRTC), a gain, and a delay that may drift by a few milliseconds over the call.
Streaming, so the echo follows pauses, resumes and stops exactly as the playout makes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import av
import numpy as np
from av import AudioFrame, AudioResampler

from voicegate.config import PIPELINE_SAMPLE_RATE

MAX_DELAY_SECS = 0.5


@dataclass(frozen=True)
class Echo:
    """The bot's own voice leaking back into the microphone.

    ``gain_db`` is the echo's level relative to the reference level given to :class:`EchoPath` (the user's
    speech when the scenario has a clip, else the bot's voice as sent).
    """

    delay_ms: float = 120.0
    gain_db: float = -12.0
    lowpass_hz: float = 3400.0
    rt60_s: float = 0.0
    """Reverberation time of the simulated room (0: no room, only the delayed, low-passed copy)."""
    codec: str = "none"
    """``none``, ``mulaw`` (8 kHz G.711, a phone line) or ``opus`` (WebRTC)."""
    drift_ms: float = 0.0
    """How far the delay moves (linearly) over the first minute of the call: clock skew between the two ends."""
    seed: int = 0


def room_impulse_response(rt60_s: float, seed: int, length_secs: float = 0.4) -> np.ndarray:
    """A simulated room response at 16 kHz with unit energy: direct path, a few early reflections, then a diffuse
    tail decaying by 60 dB in ``rt60_s``."""
    rng = np.random.default_rng(seed)
    n = int(length_secs * PIPELINE_SAMPLE_RATE)
    t = np.arange(n) / PIPELINE_SAMPLE_RATE
    h = rng.standard_normal(n) * np.exp(-6.9 * t / max(rt60_s, 1e-3)) * 0.35
    h[: int(0.003 * PIPELINE_SAMPLE_RATE)] = 0.0
    h[0] = 1.0
    for _ in range(6):
        at = int(rng.uniform(0.002, 0.025) * PIPELINE_SAMPLE_RATE)
        h[at] += rng.uniform(-0.6, 0.6)
    return (h / np.sqrt(np.sum(h ** 2))).astype(np.float32)


class _Codec:
    """A streaming codec round trip at 16 kHz in and out."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._pending = np.zeros(0, np.float32)
        if name == "mulaw":
            self._down = AudioResampler(format="s16", layout="mono", rate=8000)
            self._up = AudioResampler(format="s16", layout="mono", rate=PIPELINE_SAMPLE_RATE)
        elif name == "opus":
            self._enc = av.CodecContext.create("libopus", "w")
            self._enc.sample_rate = 48000
            self._enc.layout = "mono"
            self._enc.format = "s16"
            self._enc.bit_rate = 32000
            self._dec = av.CodecContext.create("libopus", "r")
            self._dec.sample_rate = 48000
            self._dec.layout = "mono"
            self._to48 = AudioResampler(format="s16", layout="mono", rate=48000)
            self._to16 = AudioResampler(format="s16", layout="mono", rate=PIPELINE_SAMPLE_RATE)
            self._pts = 0
        elif name != "none":
            raise ValueError(f"unknown echo codec {name!r}: none, mulaw or opus")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Code ``x`` (16 kHz float in s16 units); returns as many samples as were given (delayed by the codec)."""
        if self.name == "none":
            return x
        pcm = np.clip(x, -32768, 32767).astype(np.int16)
        out = self._mulaw(pcm) if self.name == "mulaw" else self._opus(pcm)
        self._pending = np.concatenate([self._pending, out.astype(np.float32)])
        if len(self._pending) < len(x):  # the codec's own delay at the start: silence
            self._pending = np.concatenate([np.zeros(len(x) - len(self._pending), np.float32), self._pending])
        got, self._pending = self._pending[: len(x)], self._pending[len(x):]
        return got

    def _mulaw(self, pcm: np.ndarray) -> np.ndarray:
        low = _resample(self._down, pcm, PIPELINE_SAMPLE_RATE).astype(np.float32) / 32768.0
        mu = 255.0
        code = np.round(np.sign(low) * np.log1p(mu * np.abs(low)) / np.log1p(mu) * 127) / 127
        decoded = np.sign(code) * ((1 + mu) ** np.abs(code) - 1) / mu
        return _resample(self._up, (decoded * 32767).astype(np.int16), 8000)

    def _opus(self, pcm: np.ndarray) -> np.ndarray:
        out: list[np.ndarray] = []
        frame = AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = PIPELINE_SAMPLE_RATE
        for f48 in self._to48.resample(frame):
            f48.pts = self._pts
            self._pts += f48.samples
            for packet in self._enc.encode(f48):
                for decoded in self._dec.decode(packet):
                    data = decoded.to_ndarray().reshape(-1)
                    if data.dtype != np.int16:
                        data = (np.clip(data, -1, 1) * 32767).astype(np.int16)
                    out.append(_resample(self._to16, data, 48000))
        return np.concatenate(out) if out else np.zeros(0, np.int16)


def _fft_convolve(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """``np.convolve(x, h)`` through the FFT, in float64.

    ``np.convolve`` sums with BLAS dot products, whose last bits change with the BLAS kernel
    (``OPENBLAS_CORETYPE``); the Opus round trip after the room turns such differences into a different echo, so
    the same scenario would feed the gate different audio on different CPUs. The FFT does not go through BLAS.
    """
    n = len(x) + len(h) - 1
    size = 1 << int(np.ceil(np.log2(n)))
    out = np.fft.irfft(np.fft.rfft(x.astype(np.float64), size) * np.fft.rfft(h.astype(np.float64), size), size)
    return out[:n].astype(np.float32)


def _resample(resampler: AudioResampler, pcm: np.ndarray, rate: int) -> np.ndarray:
    frame = AudioFrame.from_ndarray(np.ascontiguousarray(pcm, dtype=np.int16).reshape(1, -1), format="s16",
                                    layout="mono")
    frame.sample_rate = rate
    parts = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    return np.concatenate(parts) if parts else np.zeros(0, np.int16)


class EchoPath:
    """Streams the bot's played audio (16 kHz) into the echo the microphone picks up."""

    def __init__(self, echo: Echo, bot_level: float, reference_level: float) -> None:
        self.echo = echo
        self._rir = room_impulse_response(echo.rt60_s, echo.seed) if echo.rt60_s > 0 else None
        self._tail = np.zeros(0, np.float32)
        self._codec = _Codec(echo.codec)
        self._scale = 10 ** (echo.gain_db / 20) * reference_level / max(bot_level, 1e-6)
        size = int((MAX_DELAY_SECS + 0.1) * PIPELINE_SAMPLE_RATE)
        self._line = np.zeros(size, np.float32)
        self._written = 0
        self._lowpass_history = np.zeros(2048, np.float32)

    def process(self, played: np.ndarray) -> np.ndarray:
        """The echo for the microphone samples recorded while ``played`` (16 kHz) was being played."""
        x = played.astype(np.float32)
        if self._rir is not None:
            full = _fft_convolve(x, self._rir)
            full[: len(self._tail)] += self._tail
            x, self._tail = full[: len(x)], full[len(x):]
        elif self.echo.lowpass_hz:
            self._lowpass_history = np.concatenate([self._lowpass_history[len(x):], x])
            spec = np.fft.rfft(self._lowpass_history)
            spec[np.fft.rfftfreq(len(self._lowpass_history), 1 / PIPELINE_SAMPLE_RATE) > self.echo.lowpass_hz] = 0
            x = np.fft.irfft(spec, len(self._lowpass_history))[-len(x):].astype(np.float32)
        x = (self._codec(x) * self._scale).astype(np.float32)
        return self._delay(x)

    def _delay(self, x: np.ndarray) -> np.ndarray:
        size = len(self._line)
        n = len(x)
        idx = (self._written + np.arange(n)) % size
        self._line[idx] = x
        t_secs = (self._written + np.arange(n)) / PIPELINE_SAMPLE_RATE
        delay_ms = self.echo.delay_ms + self.echo.drift_ms * np.clip(t_secs / 60.0, 0.0, 1.0)
        read = self._written + np.arange(n) - delay_ms * PIPELINE_SAMPLE_RATE / 1000
        self._written += n
        lo = np.floor(read).astype(np.int64)
        frac = (read - lo).astype(np.float32)
        valid = lo >= 0
        a = self._line[lo % size]
        b = self._line[(lo + 1) % size]
        out = (a * (1 - frac) + b * frac) * valid
        return out.astype(np.float32)
