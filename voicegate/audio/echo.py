"""The bot's own voice coming back: recognise it (the echo guard) and remove it (the canceller).

The gate knows exactly what it played. :class:`EchoControl` keeps the outbound signal (resampled to 16 kHz) on a
timeline locked to the inbound samples, so that "what was played ``d`` samples before this microphone sample"
means the same thing for every window, however the network bunches inbound packets.

:class:`EchoGuard` — voiced speech correlates with *any* voiced speech at some lag (pitch pulses line up), so a high
correlation alone proves nothing; an echo is a high correlation *at a stable delay*. The guard locks onto a delay
once three of the last six windows agree on it (within ``lag_tolerance_ms``) with a correlation of at least
``lock_ncc``, and from then on scores windows only around that delay. Before a lock nothing is called echo: the
gate would rather pause for its own voice than ignore the user.

:class:`~voicegate.audio.aec.EchoCanceller` runs at the locked delay and gives the detectors the cleaned signal; the
guard keeps reading the raw one. Once the canceller removes ≥ 10 dB, a window counts as echo only when the
canceller took most of it away — a user talking over loud echo is what is left, so the gate still hears them.
"""

from __future__ import annotations

import threading
from collections import deque

import numpy as np
from av import AudioFrame, AudioResampler

from voicegate.audio.aec import OUTPUT_DELAY_SAMPLES, EchoCanceller, unavailable_reason
from voicegate.audio.vad import dbfs_window
from voicegate.config import PIPELINE_SAMPLE_RATE

RING_SECS = 2.0
MIN_WINDOW_ENERGY = 1e3
"""Sum of squares (s16 units) under which a window is too quiet to correlate (≈ −87 dBFS over 512 samples)."""
ANCHOR_MARGIN_MS = 20.0
"""The reference is read this far behind the newest outbound sample, so a burst of inbound packets never asks
for audio that has not been played yet."""
REANCHOR_MS = 60.0
ECHO_HOLD_WINDOWS = 10
ECHO_LEVEL_MARGIN_DB = 3.0
ECHO_DOUBT_DB = 6.0
"""With a working canceller, a window from which it removed less than its echo threshold, but by less than this
margin (a third of the threshold when that is smaller: at the 6 dB floor a user over loud echo keeps only 3–4 dB
more than the canceller's output), is *doubtful*: echo residue or the start of a user talking over the echo.
One residual window of the bot's voice read as speech (0.55) with 17.5 dB removed against a 19.6 dB threshold,
and paused the bot: a doubtful window therefore cannot start speech alone (:meth:`VadDetector.step`)."""


class EchoGuard:
    """Scores inbound windows against the reference that ends where they end."""

    def __init__(self, max_delay_ms: float = 400.0, window_samples: int = 512, lock_ncc: float = 0.7,
                 lag_tolerance_ms: float = 30.0, lock_hold_ms: float = 4000.0) -> None:
        self.max_delay = int(PIPELINE_SAMPLE_RATE * max_delay_ms / 1000)
        self.window = window_samples
        self.lock_ncc = lock_ncc
        self.tolerance = int(PIPELINE_SAMPLE_RATE * lag_tolerance_ms / 1000)
        self.hold_windows = int(lock_hold_ms / (1000 * window_samples / PIPELINE_SAMPLE_RATE))
        self._nfft = 1 << int(np.ceil(np.log2(self.max_delay + 2 * window_samples)))
        self._candidates: deque[tuple[int, float]] = deque(maxlen=6)
        self.locked_delay: int | None = None
        self._since_confirmed = 0

    def _ncc(self, window: np.ndarray, ref: np.ndarray) -> np.ndarray | None:
        """Normalised cross-correlation per delay (index = delay in samples), None when either side is silent."""
        w = window.astype(np.float32)
        w_energy = float(np.dot(w, w))
        n = len(w)
        if w_energy < MIN_WINDOW_ENERGY or float(np.dot(ref, ref)) < MIN_WINDOW_ENERGY * len(ref) / n:
            return None
        corr = np.fft.irfft(np.fft.rfft(ref, self._nfft) * np.conj(np.fft.rfft(w, self._nfft)), self._nfft)
        corr = corr[: len(ref) - n + 1]
        csum = np.concatenate([[0.0], np.cumsum(ref.astype(np.float64) ** 2)])
        seg_energy = csum[n:] - csum[:-n]
        ncc = np.abs(corr) / np.sqrt(np.maximum(seg_energy, 1.0) * w_energy)
        return ncc[::-1]  # index 0 = the reference that ends with the window = no delay

    def score(self, window: np.ndarray, ref: np.ndarray) -> float:
        """Correlation (0..1) of ``window`` with the reference at the locked echo delay; 0 without a lock.

        ``ref`` holds ``max_delay + window`` samples ending at the same instant as ``window``.
        """
        ncc = self._ncc(window, ref)
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

    def silent(self) -> None:
        """A window too quiet to correlate (skipped): the same bookkeeping as one with no correlation."""
        self._since_confirmed += 1
        if self.locked_delay is not None and self._since_confirmed > self.hold_windows:
            self.locked_delay = None
        self._candidates.append((-1, 0.0))

    def _update_lock(self) -> None:
        strong = [d for d, p in self._candidates if p >= self.lock_ncc and d >= 0]
        if len(strong) < 3:
            return
        median = int(np.median(strong))
        agreeing = [d for d in strong if abs(d - median) <= self.tolerance]
        if len(agreeing) >= 3:
            self.locked_delay = int(np.median(agreeing))
            self._since_confirmed = 0


class EchoControl:
    """One call's echo handling: the outbound reference, the guard, and (optionally) the canceller.

    :meth:`add_outbound` is called from the event loop as frames are sent; everything else runs on the call's gate
    thread.
    """

    def __init__(self, playout_sample_rate: int, correlation: float, cancel: bool = True) -> None:
        self.correlation = correlation
        self.guard = EchoGuard()
        self.aec = EchoCanceller() if cancel and unavailable_reason() is None else None
        self.lag = 0
        """Samples by which :meth:`cancel`'s output lags its input (the canceller's processing delay)."""
        self.engaged = False
        """An echo has been found in this call: the detectors hear the cleaned signal."""
        self._raw_delay = np.zeros(OUTPUT_DELAY_SAMPLES, np.float32)
        self._rate = playout_sample_rate
        self._resampler = AudioResampler(format="s16", layout="mono", rate=PIPELINE_SAMPLE_RATE)
        self._ring = np.zeros(int(RING_SECS * PIPELINE_SAMPLE_RATE), np.float32)
        self._written = 0
        """16 kHz reference samples converted into the ring so far."""
        self._queued: deque[np.ndarray] = deque()
        self._queued_samples = 0
        self._dropped_16k = 0
        self._lock = threading.Lock()
        self._offset: int | None = None
        """Reference index = inbound index + offset (locked at the first chunk, re-locked after a jump)."""
        self._pending = np.zeros(0, np.float32)
        self._mic_pos = 0
        self._echo_windows: deque[tuple[float, float]] = deque(maxlen=ECHO_HOLD_WINDOWS)
        self.near_end = False
        """Set by the gate: the user is speaking (the canceller does not adapt)."""
        self.reanchors = 0
        self.doubtful = False
        """Set by :meth:`is_echo`: the last window was not echo, but only within :data:`ECHO_DOUBT_DB` of it."""

    def add_outbound(self, pcm: np.ndarray) -> None:
        """Record one outbound frame (at the playout rate) as it is sent.

        Cheap on purpose (it runs on the event loop for every frame of every call): the frame is only queued;
        the gate thread converts the queue to 16 kHz when it next needs the reference (:meth:`_reference`), so a
        call whose caller is silent never pays for it.
        """
        with self._lock:
            self._queued.append(pcm.copy())
            self._queued_samples += len(pcm)
            while self._queued_samples > self._rate * RING_SECS:
                dropped = len(self._queued.popleft())
                self._queued_samples -= dropped
                self._dropped_16k += dropped * PIPELINE_SAMPLE_RATE // self._rate

    def _convert(self) -> None:
        """Resample the queued outbound frames into the 16 kHz ring (gate thread; call with the lock held)."""
        # More than the ring holds was queued while nobody looked: the oldest part only moves the index on.
        self._written += self._dropped_16k
        self._dropped_16k = 0
        if not self._queued:
            return
        pcm = np.concatenate(self._queued)
        self._queued.clear()
        self._queued_samples = 0
        if self._rate == PIPELINE_SAMPLE_RATE:
            data = pcm.astype(np.float32)
        else:
            frame = AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = self._rate
            parts = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
            if not parts:
                return
            data = np.concatenate(parts).astype(np.float32)
        size = len(self._ring)
        data = data[-size:]
        at = self._written % size
        first = min(len(data), size - at)
        self._ring[at:at + first] = data[:first]
        self._ring[:len(data) - first] = data[first:]
        self._written += len(data)

    def _reference(self, end: int, length: int) -> np.ndarray:
        """``length`` reference samples ending at reference index ``end`` (zeros for what was never played)."""
        size = len(self._ring)
        out = np.zeros(length, np.float32)
        with self._lock:
            self._convert()
            lo = max(end - length, self._written - size, 0)
            hi = min(end, self._written)
            if hi > lo:
                a, b = lo % size, hi % size
                dest = out[lo - (end - length):hi - (end - length)]
                if a < b:
                    dest[:] = self._ring[a:b]
                else:
                    first = size - a
                    dest[:first] = self._ring[a:]
                    dest[first:] = self._ring[:b]
        return out

    def outbound_samples(self) -> int:
        """The outbound audio sent so far, in 16 kHz reference samples (any thread).

        Read as a microphone chunk arrives and handed to :meth:`cancel` with it, it anchors the chunk to what had
        been played when it was heard, however long the chunk then waits for the detector thread."""
        with self._lock:
            return self._written + self._dropped_16k + self._queued_samples * PIPELINE_SAMPLE_RATE // self._rate

    def _anchor(self, chunk_end: int, outbound_samples: int | None = None) -> int:
        written = self.outbound_samples() if outbound_samples is None else outbound_samples
        now = written - chunk_end - int(ANCHOR_MARGIN_MS * PIPELINE_SAMPLE_RATE / 1000)
        if self._offset is None or abs(now - self._offset) > REANCHOR_MS * PIPELINE_SAMPLE_RATE / 1000:
            if self._offset is not None:
                self.reanchors += 1
            self._offset = now
        return self._offset

    def cancel(self, pcm: np.ndarray, outbound_samples: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Run the canceller over a microphone chunk; returns (raw, for the detectors) for the same instants.

        The canceller always runs (it learns), but the detectors get its output only once an echo has been found
        (:attr:`engaged`): with headphones, or a browser that cancels its own echo, nothing comes back, and the
        canceller's residual suppression would only blunt the starts of the user's words. Once engaged, the raw
        signal is delayed like the cleaned one (WebRTC's processing delay, :attr:`lag`). ``outbound_samples``:
        :meth:`outbound_samples` read when the chunk arrived (default: now).
        """
        offset = self._anchor(self._mic_pos + len(self._pending) + len(pcm), outbound_samples)
        self._pending = np.concatenate([self._pending, pcm.astype(np.float32)])
        aec = self.aec
        if aec is None or aec.failed:
            raw = self._pending.astype(np.int16)
            self._mic_pos += len(self._pending)
            self._pending = np.zeros(0, np.float32)
            self.lag = 0
            self.engaged = False
            return raw, raw
        raws, outs = [], []
        block = aec.n
        while len(self._pending) >= block:
            mic, self._pending = self._pending[:block], self._pending[block:]
            ref = self._reference(self._mic_pos + block + offset, block)
            cleaned = aec.process(mic, ref, self.near_end)
            delayed = np.concatenate([self._raw_delay, mic])
            self._raw_delay = delayed[block:]
            self._mic_pos += block
            if not self.engaged and aec.estimator.delay is not None:
                self.engaged = True  # from here on the detectors hear the cleaned signal (7 ms later)
                self.lag = OUTPUT_DELAY_SAMPLES
            if self.engaged:
                raws.append(delayed[:block])
                outs.append(cleaned.astype(np.float32))
            else:
                raws.append(mic)
                outs.append(mic)
        if not raws:
            empty = np.zeros(0, np.int16)
            return empty, empty
        raw = np.clip(np.concatenate(raws), -32768, 32767).astype(np.int16)
        return raw, np.clip(np.concatenate(outs), -32768, 32767).astype(np.int16)

    def score(self, raw_window: np.ndarray, end: int) -> float:
        """The guard's score for a raw window as returned by :meth:`cancel`, ending at output index ``end``."""
        offset = self._offset if self._offset is not None else self._anchor(end)
        ref = self._reference(end - self.lag + offset, self.guard.max_delay + len(raw_window))
        return self.guard.score(raw_window, ref)

    @staticmethod
    def too_quiet(raw_window: np.ndarray) -> bool:
        """Would :meth:`score` find nothing to correlate in this window? (Then :meth:`skip` does the same work.)"""
        x = raw_window.astype(np.float32)
        return float(np.dot(x, x)) < MIN_WINDOW_ENERGY

    def skip(self, raw_window: np.ndarray) -> None:
        """A window too quiet to correlate: the guard's history moves on exactly as :meth:`score` and
        :meth:`is_echo` would have moved it, without the correlation."""
        self.guard.silent()
        self._echo_windows.append((0.0, dbfs_window(raw_window)))

    def close(self) -> None:
        """Release the canceller's native state."""
        if self.aec is not None:
            self.aec.close()

    def is_echo(self, raw_window: np.ndarray, clean_window: np.ndarray, score: float) -> bool:
        """Is this window the bot's own voice?

        With a working canceller: only when it removed most of the window (what is left is a residue, not a
        user). Without: correlated with what the bot just said, or no louder than the echo heard in the last
        ~300 ms (correlation dips inside quiet stretches of echoed speech; a user talking over the echo is louder).
        """
        level = dbfs_window(raw_window)
        recent = [lvl for s, lvl in self._echo_windows if s >= self.correlation]
        self._echo_windows.append((score, level))
        self.doubtful = False
        aec = self.aec
        if aec is not None and self.engaged and aec.converged:
            # Echo alone loses about the canceller's ERLE; a user talking over it keeps most of their level.
            removed_db = level - dbfs_window(clean_window)
            threshold_db = min(max(aec.erle_db - 8.0, 6.0), 25.0)
            self.doubtful = threshold_db - min(ECHO_DOUBT_DB, threshold_db / 3) <= removed_db < threshold_db
            return removed_db >= threshold_db
        if score >= self.correlation:
            return True
        return bool(recent) and level <= max(recent) + ECHO_LEVEL_MARGIN_DB
