"""Silero VAD on onnxruntime (one intra-op thread, per-call state) with hysteresis and a noise-floor gate.

In the server the windows of all the calls of a process share ONNX runs (:func:`silero_batch`, driven by
:class:`~voicegate.gate.detectors.DetectorThread`): Silero's ONNX graph takes a batch of windows with one recurrent
state per row, and a row's output and new state are bit-identical to those of a run of that row alone, so batching
changes no decision.
"""

from __future__ import annotations

import bisect
import functools
import importlib.util
import math
import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voicegate.config import PIPELINE_SAMPLE_RATE, GateOptions, ort_graph_optimization

WINDOW_SAMPLES = 512
"""Silero's window at 16 kHz: 32 ms."""
WINDOW_MS = 1000.0 * WINDOW_SAMPLES / PIPELINE_SAMPLE_RATE
_CONTEXT_SAMPLES = 64
_SR = np.array(PIPELINE_SAMPLE_RATE, dtype=np.int64)


def silero_model_path() -> Path:
    """The ONNX model shipped in the ``silero-vad`` wheel (located without importing torch)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("silero-vad is not installed: `pip install silero-vad` (or `make install`)")
    path = Path(spec.origin).parent / "data" / "silero_vad.onnx"
    if not path.exists():
        raise FileNotFoundError(f"{path} missing from the silero-vad wheel: reinstall silero-vad")
    return path


@functools.cache
def _session() -> object:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL, "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }[ort_graph_optimization()]
    return ort.InferenceSession(str(silero_model_path()), sess_options=opts, providers=["CPUExecutionProvider"])


@dataclass
class VadQuery:
    """One window waiting for Silero: its input row (``[1, 576]``, the window after its 64 samples of context) and
    its stream's recurrent state (``[2, 1, 128]``)."""

    x: np.ndarray
    state: np.ndarray


@dataclass
class VadAnswer:
    """Silero's answer to a :class:`VadQuery`: the probability, the stream's next state, and this window's share of
    the run's compute."""

    prob: float
    state: np.ndarray
    compute_ms: float


def silero_batch(queries: list[VadQuery]) -> list[tuple[float, np.ndarray]]:
    """Classify the windows of several streams in one ONNX run (``[B, 576]`` input, ``[2, B, 128]`` state): each
    row's probability and next state are bit-identical to a run of that row alone (``tests/test_capacity.py``), so
    batching changes no decision. Returns ``(probability, next state)`` per query, in order."""
    session = _session()
    if len(queries) == 1:
        out, state = session.run(None, {"input": queries[0].x, "state": queries[0].state, "sr": _SR})  # type: ignore[attr-defined]
        return [(float(out[0][0]), state)]
    x = np.concatenate([q.x for q in queries], axis=0)
    states = np.concatenate([q.state for q in queries], axis=1)
    out, new_states = session.run(None, {"input": x, "state": states, "sr": _SR})  # type: ignore[attr-defined]
    return [(float(out[i][0]), np.ascontiguousarray(new_states[:, i:i + 1, :])) for i in range(len(queries))]


def vad_batch_limit() -> int:
    """The most windows one Silero run takes (``VOICEGATE_VAD_BATCH=0``: 1, every window runs alone)."""
    return 1 if os.environ.get("VOICEGATE_VAD_BATCH", "1") == "0" else 64


class SileroVad:
    """Speech probability of each 512-sample window; the model is shared, the recurrent state is per call.

    :meth:`query` / :meth:`commit` split one window's classification in two, so that a caller can run many calls'
    windows in one ONNX run (:func:`silero_batch`) in between; ``__call__`` runs one window alone.
    """

    def __init__(self) -> None:
        _session()  # loaded now, not on the first window
        self.reset()

    def reset(self) -> None:
        """Forget the recurrent state (a new call)."""
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros((1, _CONTEXT_SAMPLES), dtype=np.float32)

    def query(self, window: np.ndarray) -> VadQuery:
        """The model input for ``window`` (512 samples, s16 or float in [-1, 1]); the next :meth:`query` must wait
        for this one's :meth:`commit`."""
        x = window.astype(np.float32).reshape(1, -1)
        if window.dtype == np.int16:
            x /= 32768.0
        x = np.concatenate([self._context, x], axis=1)
        self._context = x[:, -_CONTEXT_SAMPLES:]
        return VadQuery(x, self._state)

    def commit(self, state: np.ndarray) -> None:
        """The state the model returned for the last :meth:`query`."""
        self._state = state

    def __call__(self, window: np.ndarray) -> float:
        """Probability that ``window`` (512 samples, s16 or float in [-1, 1]) is speech."""
        (prob, state), = silero_batch([self.query(window)])
        self.commit(state)
        return prob


@dataclass(frozen=True)
class VadWindow:
    """The verdict on one 32 ms window."""

    end_samples: int
    """Stream position just after the window."""
    prob: float
    level_dbfs: float
    floor_dbfs: float
    voiced: bool
    """Above the onset threshold and the noise-floor gate (and not echo)."""
    event: str | None = None
    """``"start"`` or ``"end"`` when speech begins or ends with this window."""
    segment_start_samples: int = 0
    """Where the current (or just ended) speech segment started."""


class VadDetector:
    """Turns window probabilities into speech onset/offset with hysteresis.

    A window is voiced when Silero's probability is at least ``vad_onset_threshold`` *and* its level is
    ``noise_floor_margin_db`` above the noise floor (the 10th percentile of the last 3 s of window levels), so a
    steady tap, fan or hum never counts. Speech ends after ``vad_hangover_ms`` of windows under
    ``vad_offset_threshold`` (or under the floor gate).
    """

    def __init__(self, options: GateOptions, vad: SileroVad | None = None) -> None:
        self.options = options
        self.vad = vad or SileroVad()
        self.speaking = False
        self._levels: deque[float] = deque(maxlen=int(3000 / WINDOW_MS))
        self._sorted_levels: list[float] = []
        """The same levels kept sorted, so the floor is an O(log n) update, not a percentile over 3 s per window."""
        self._run = 0
        self._run_clear = False
        """The current run of voiced windows holds one that is not doubtful (see :meth:`step`)."""
        self._silence_ms = 0.0
        self._segment_start = 0
        self._pending = np.zeros(0, dtype=np.int16)
        self._position = 0

    def feed(self, pcm: np.ndarray) -> list[VadWindow]:
        """Consume any number of samples; returns one :class:`VadWindow` per complete window (no echo flags:
        drivers that have an echo guard call :meth:`step` per window instead)."""
        self._pending = np.concatenate([self._pending, pcm.astype(np.int16, copy=False)])
        out = []
        while len(self._pending) >= WINDOW_SAMPLES:
            window, self._pending = self._pending[:WINDOW_SAMPLES], self._pending[WINDOW_SAMPLES:]
            out.append(self.step(window))
        return out

    def step(self, window: np.ndarray, is_echo: bool = False, hangover_ms: float | None = None,
             doubtful: bool = False) -> VadWindow:
        """Classify one 512-sample window (``is_echo``: the echo guard says it is the bot's own voice;
        ``doubtful``: it says the window is not echo, but only just — such a window starts speech only when the
        next window is voiced too, so a single window of echo residue never pauses the bot)."""
        # Silero runs on every window, silence included: its recurrent state keeps drifting over seconds of silence
        # and skipping windows measurably moves later onsets (by a window or two); the model is the cheap part.
        return self.decide(window, self.vad(window), is_echo, hangover_ms, doubtful)

    def decide(self, window: np.ndarray, prob: float, is_echo: bool = False, hangover_ms: float | None = None,
               doubtful: bool = False) -> VadWindow:
        """:meth:`step` for a window whose Silero probability is known (it ran in a batch: ``self.vad.query`` then
        ``self.vad.commit``)."""
        level = dbfs_window(window)
        floor = self._floor(level)
        loud = level >= max(self.options.min_speech_dbfs, floor + self.options.noise_floor_margin_db)
        voiced = prob >= self.options.vad_onset_threshold and loud and not is_echo
        start = self._position
        self._position += len(window)
        event = None
        if not self.speaking:
            self._run = self._run + 1 if voiced else 0
            self._run_clear = (self._run_clear or not doubtful) if self._run else False
            if self._run >= self.options.vad_onset_windows and (self._run_clear or self._run >= 2):
                self.speaking = True
                self._silence_ms = 0.0
                self._segment_start = start - (self._run - 1) * WINDOW_SAMPLES
                event = "start"
        else:
            keeps = prob >= self.options.vad_offset_threshold and loud and not is_echo
            self._silence_ms = 0.0 if keeps else self._silence_ms + WINDOW_MS
            limit = self.options.vad_hangover_ms if hangover_ms is None else hangover_ms
            if self._silence_ms >= limit:
                self.speaking = False
                self._run = 0
                event = "end"
        return VadWindow(self._position, prob, level, floor, voiced, event, self._segment_start)

    def _floor(self, level: float) -> float:
        """Add ``level``; the 10th percentile (linear, as ``np.percentile``) of the last 3 s of levels."""
        if len(self._levels) == self._levels.maxlen:
            oldest = self._levels[0]
            del self._sorted_levels[bisect.bisect_left(self._sorted_levels, oldest)]
        self._levels.append(level)
        bisect.insort(self._sorted_levels, level)
        n = len(self._sorted_levels)
        if n < 8:
            return -90.0
        rank = 0.1 * (n - 1)
        low = int(rank)
        high = min(low + 1, n - 1)
        return self._sorted_levels[low] + (self._sorted_levels[high] - self._sorted_levels[low]) * (rank - low)


def dbfs_window(window: np.ndarray) -> float:
    """Mean power of an s16 window in dBFS (one conversion and a dot product: it runs several times a frame)."""
    if not len(window):
        return -120.0
    x = window.astype(np.float32)
    power = float(np.dot(x, x)) / (len(x) * 1073741824.0)  # 32768²
    return 10.0 * math.log10(power + 1e-12)
