"""Silero VAD on onnxruntime (one intra-op thread, per-call state) with hysteresis and a noise-floor gate.

In the server the windows of all the calls of a process share ONNX runs (:class:`VadBatcher`): Silero's ONNX graph
takes a batch of windows with one recurrent state per row, and a row's output and new state are bit-identical to
those of a run of that row alone, so batching changes no decision.
"""

from __future__ import annotations

import bisect
import functools
import importlib.util
import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voicegate.config import PIPELINE_SAMPLE_RATE, GateOptions, ort_graph_optimization

WINDOW_SAMPLES = 512
"""Silero's window at 16 kHz: 32 ms."""
WINDOW_MS = 1000.0 * WINDOW_SAMPLES / PIPELINE_SAMPLE_RATE
_CONTEXT_SAMPLES = 64


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


class _Request:
    """One window waiting for a batched run (``done`` is released when its result, or the lead, is handed over)."""

    __slots__ = ("done", "error", "lead", "prob", "state", "x")

    def __init__(self, x: np.ndarray, state: np.ndarray) -> None:
        self.x = x
        self.state = state
        self.prob = 0.0
        self.error: BaseException | None = None
        self.lead = False
        self.done = threading.Lock()
        self.done.acquire()


class VadBatcher:
    """Runs Silero once for the windows of many calls (any threads): flat combining, plus an optional gather.

    A call thread that needs a window's probability queues it; if no run is in progress it leads: it waits up to
    ``gather_ms`` for other calls' windows (0: not at all), then runs every queued window in one ONNX run
    (``[B, 576]`` input, ``[2, B, 128]`` state) and hands each caller its row; windows that arrive during a run go
    into the next one, led by the first of them. With ``gather_ms=0`` a window never waits for more than the run in
    progress, and batches grow only as the process gets busy; with ``gather_ms`` ≥ 32 every call's window of a
    32 ms tick shares one run, at the price of up to that much delay on every VAD decision (a pause included). A
    row's result is bit-identical to running it alone (``tests/test_capacity.py``), so no decision changes.
    """

    def __init__(self, max_batch: int = 64, gather_ms: float = 0.0) -> None:
        self.max_batch = max_batch
        self.gather_ms = gather_ms
        self._session = _session()
        self._sr = np.array(PIPELINE_SAMPLE_RATE, dtype=np.int64)
        self._lock = threading.Lock()
        self._pending: list[_Request] = []
        self._busy = False
        self.runs = 0
        """ONNX runs so far."""
        self.windows = 0
        """Windows classified so far (``windows / runs``: the mean batch)."""

    def infer(self, x: np.ndarray, state: np.ndarray) -> tuple[float, np.ndarray]:
        """Speech probability of one window (``x``: ``[1, 576]`` with its context) and the stream's next state."""
        request = _Request(x, state)
        with self._lock:
            self._pending.append(request)
            lead = not self._busy
            self._busy = True
        if not lead:
            request.done.acquire()  # until a run has classified it, or until it is this thread's turn to lead
            lead = request.lead
        if lead:
            self._lead()
        if request.error is not None:
            raise request.error
        return request.prob, request.state

    def _lead(self) -> None:
        """Run every queued window (this thread's is first), then hand the lead to the first that came meanwhile."""
        if self.gather_ms > 0:
            time.sleep(self.gather_ms / 1000)
        with self._lock:
            batch, self._pending = self._pending[:self.max_batch], self._pending[self.max_batch:]
        try:
            if len(batch) == 1:
                x, state = batch[0].x, batch[0].state
            else:
                x = np.concatenate([r.x for r in batch], axis=0)
                state = np.concatenate([r.state for r in batch], axis=1)
            out, new_state = self._session.run(  # type: ignore[attr-defined]
                None, {"input": x, "state": state, "sr": self._sr})
            for i, r in enumerate(batch):
                r.prob = float(out[i][0])
                r.state = new_state if len(batch) == 1 else np.ascontiguousarray(new_state[:, i:i + 1, :])
        except BaseException as exc:  # every caller of this run sees the failure
            for r in batch:
                r.error = exc
        with self._lock:
            self.runs += 1
            self.windows += len(batch)
            successor = self._pending[0] if self._pending else None
            if successor is None:
                self._busy = False
            else:
                successor.lead = True
        for r in batch[1:]:
            r.done.release()
        if successor is not None:
            successor.done.release()


@functools.cache
def vad_batcher() -> VadBatcher | None:
    """The process's :class:`VadBatcher` (``VOICEGATE_VAD_BATCH=0``: none, every call runs Silero alone;
    ``VOICEGATE_VAD_BATCH_MS``: its gather wait, default 0)."""
    if os.environ.get("VOICEGATE_VAD_BATCH", "1") == "0":
        return None
    return VadBatcher(gather_ms=float(os.environ.get("VOICEGATE_VAD_BATCH_MS", "0")))


class SileroVad:
    """Speech probability of each 512-sample window; the model is shared, the recurrent state is per call.

    With a ``batcher`` the window is classified in a run shared with other calls' windows (same result).
    """

    def __init__(self, batcher: VadBatcher | None = None) -> None:
        self._session = _session()
        self._sr = np.array(PIPELINE_SAMPLE_RATE, dtype=np.int64)
        self.batcher = batcher
        self.reset()

    def reset(self) -> None:
        """Forget the recurrent state (a new call)."""
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros((1, _CONTEXT_SAMPLES), dtype=np.float32)

    def __call__(self, window: np.ndarray) -> float:
        """Probability that ``window`` (512 samples, s16 or float in [-1, 1]) is speech."""
        x = window.astype(np.float32).reshape(1, -1)
        if window.dtype == np.int16:
            x /= 32768.0
        x = np.concatenate([self._context, x], axis=1)
        self._context = x[:, -_CONTEXT_SAMPLES:]
        if self.batcher is not None:
            prob, self._state = self.batcher.infer(x, self._state)
            return prob
        out, self._state = self._session.run(None, {"input": x, "state": self._state, "sr": self._sr})  # type: ignore[attr-defined]
        return float(out[0][0])


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
        level = dbfs_window(window)
        # Silero runs on every window, silence included: its recurrent state keeps drifting over seconds of silence
        # and skipping windows measurably moves later onsets (by a window or two); the model is the cheap part.
        prob = self.vad(window)
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
