"""The process's detector thread: every live call's chunks through its models, Silero batched across calls.

A call's inbound chunk is a :class:`Job` on one queue. The thread takes every job that is waiting, steps each
call's models (:meth:`GateModels.steps <voicegate.gate.driver.GateModels.steps>`: echo canceller, echo guard) up to
the point where a window needs Silero, runs all those windows in **one** ONNX run
(:func:`~voicegate.audio.vad.silero_batch`, bit-identical to one run per window) and hands each its answer; once
every chunk's windows are decided and handed to its loop (``Job.early``), the keyword spotter runs on each chunk
(PocketSphinx holds the GIL: after urgent windows the thread first lets the loop apply them), then each chunk's
whole result goes back (``Job.deliver``). Results go back to each event loop in one ``call_soon_threadsafe`` per
drain (a chunk that could be speech, with everything finished before it, as soon as it is ready).

Against a thread per call fed through ``run_in_executor``, a chunk costs no executor future, no thread wake-up
while the thread is busy and no loop wake-up of its own. A chunk that could start speech (``Job.urgent``) wakes the
thread at once, so no pause waits for a batch to fill; a quiet one — below the VAD's hard level floor, nothing loud
in the last 400 ms, the VAD not in speech — waits for the next 20 ms tick of the process's grid, so the quiet
chunks of all calls share one wake-up, one Silero run and one hop back to the loop; a quiet chunk of an idle call
(nothing in progress: no speech, no verdict or turn owed) waits for the next 100 ms tick, so its call's windows run
a few at a time, on warm caches. An urgent chunk takes its own call's backlog with it and leaves the other calls'
quiet chunks for their tick. The jobs of one call run in the order they were submitted, one at a time.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from voicegate.audio.vad import VadAnswer, VadQuery, silero_batch, vad_batch_limit

if TYPE_CHECKING:
    from voicegate.gate.driver import GateModels, StepResult

log = logging.getLogger(__name__)

APPLY_WAIT_SECS = 0.005
"""After handing urgent windows to a loop, the detector thread waits this long at most for the loop to apply them
before the spotter's work (Python's switch interval: a thread kept waiting longer for the GIL would force it)."""

Deliver = Callable[["StepResult | None", "BaseException | None"], None]
"""Called on the job's event loop with the step's result, or the exception it raised."""


@dataclass(eq=False)
class Job:
    """One chunk of one call (``pcm``), or, with ``pcm=None``, ``action`` run on the thread after the call's earlier
    chunks (releasing native state that a step in flight may still use)."""

    models: GateModels
    pcm: np.ndarray | None
    hangover_ms: float
    loop: asyncio.AbstractEventLoop | None
    deliver: Deliver | None
    action: Callable[[], None] | None = None
    kws_enabled: bool | None = None
    """The spotter's switch when the chunk arrived (None: the models' current one)."""
    urgent: bool = True
    """The chunk could start speech: it wakes the thread at once. A quiet one waits for the next tick."""
    idle: bool = False
    """A quiet chunk of a call with nothing in progress (no speech, no verdict or turn owed): it may wait for the
    next idle tick (:attr:`DetectorThread.idle_tick_ms`)."""
    outbound_samples: int | None = None
    """The bot's audio sent when the chunk arrived (the echo canceller's anchor; None: when it runs)."""
    due: float = 0.0
    """Set by :meth:`DetectorThread.submit`: the monotonic time (s) by which the chunk must run."""
    early: Callable[[StepResult], None] | None = None
    """Called on ``loop`` with the chunk's result as soon as its VAD windows are decided, before the keyword spotter
    runs on it (``deliver`` then follows with the whole result, hits added)."""


Finished = tuple[Job, "StepResult | None", "BaseException | None"]
"""A chunk's job with its result, or the exception its step raised."""

_Delivery = tuple[Job, "StepResult | None", "BaseException | None", bool]
"""A :data:`Finished` and whether it is only the chunk's windows (``Job.early``)."""


class _Results:
    """What the drain has for the loops, in order: each chunk's windows (:meth:`add_windows`) and then its whole
    result (:meth:`add`). An urgent chunk's (and everything queued before it, so each call's results stay in order)
    go to its loop at once, the rest at the drain's end."""

    __slots__ = ("acks", "items", "sent")

    def __init__(self) -> None:
        self.items: list[_Delivery] = []
        self.sent = 0
        self.acks: list[threading.Event] = []
        """Set when a loop has applied urgent windows handed to it (:meth:`wait_applied`)."""

    def add_windows(self, job: Job, result: StepResult) -> None:
        if job.early is not None:
            self.items.append((job, result, None, True))
            if job.urgent:
                self.flush(ack=True)

    def add(self, job: Job, result: StepResult | None, exc: BaseException | None) -> None:
        self.items.append((job, result, exc, False))
        if job.urgent:
            self.flush()

    def flush(self, ack: bool = False) -> None:
        if self.sent < len(self.items):
            self.acks += DetectorThread.deliver(self.items[self.sent:], ack)
            self.sent = len(self.items)

    def wait_applied(self, timeout_secs: float) -> None:
        """Wait (the GIL released) until the loops have applied the urgent windows handed to them, at most
        ``timeout_secs``: the spotter's work that follows holds the GIL (PocketSphinx never releases it), and a
        pause must not wait for it."""
        if self.acks:
            deadline = time.monotonic() + timeout_secs
            for applied in self.acks:
                applied.wait(max(0.0, deadline - time.monotonic()))
            self.acks.clear()

    def finished(self) -> list[Finished]:
        return [(job, result, exc) for job, result, exc, early in self.items if not early]


class _Lane:
    """The waiting jobs of one call, and the one in progress."""

    __slots__ = ("gen", "job", "jobs")

    def __init__(self) -> None:
        self.jobs: deque[Job] = deque()
        self.job: Job | None = None
        self.gen: Generator[VadQuery | StepResult, VadAnswer | None, StepResult] | None = None


class DetectorThread:
    """One daemon thread that runs every live call's detectors (see the module's docstring)."""

    def __init__(self, max_batch: int | None = None, tick_ms: float | None = None,
                 idle_tick_ms: float | None = None) -> None:
        self.max_batch = max_batch if max_batch is not None else vad_batch_limit()
        self.tick_ms = tick_ms if tick_ms is not None else detector_tick_ms()
        """A quiet chunk (``Job.urgent`` false: it cannot start speech) waits for the next multiple of this on the
        monotonic clock, so that the chunks of other calls that arrive meanwhile share its drain (one wake-up, one
        Silero run); an urgent chunk ends the wait at once. 0: never wait."""
        self.idle_tick_ms = idle_tick_ms if idle_tick_ms is not None else detector_idle_tick_ms()
        """The same for a quiet chunk of an idle call (``Job.idle``): its results change nothing until the caller
        speaks, and a Silero run costs a third as much when the thread's caches are warm from the one before it
        (one window: ≈ 170 µs back to back, ≈ 490 µs after 20 ms asleep), so an idle call's chunks are run a few at
        a time. When one of its chunks is urgent, the backlog runs first, at once."""
        self._wake = threading.Event()
        self._queue: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self._pending: list[Job] = []
        """Jobs taken off the queue and not yet run (the thread's own)."""
        self._asleep_until = 0.0
        """When the sleeping thread will next look at its jobs (monotonic s; inf: it waits for the first)."""
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.runs = 0
        """Silero runs so far (all calls)."""
        self.windows = 0
        """Windows classified so far (``windows / runs``: the mean batch)."""

    def submit(self, job: Job) -> None:
        """Queue ``job`` (any thread); its result is delivered on ``job.loop``."""
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="voicegate-detectors", daemon=True)
                    self._thread.start()
        tick_secs = (self.idle_tick_ms if job.idle and self.idle_tick_ms > 0 else self.tick_ms) / 1000
        if job.urgent or tick_secs <= 0:
            job.due = 0.0
        else:
            now = time.monotonic()
            job.due = now + tick_secs - now % tick_secs
        self._queue.put(job)
        # An urgent job also ends the spotter's turn in a drain (:meth:`_arrived`); a quiet one wakes the thread
        # only if it sleeps past the job's tick (read after the put: the thread sets it, then checks its queue).
        if job.urgent or job.due < self._asleep_until:
            self._wake.set()

    def _run(self) -> None:
        while True:
            if not self._pending:
                self._asleep_until = math.inf
                self._pending.append(self._queue.get())
            self._wake.clear()
            self._pending += self._take()
            due = min(job.due for job in self._pending)
            if due > time.monotonic():
                self._asleep_until = due
                if self._queue.empty():
                    self._wake.wait(max(0.0, due - time.monotonic()))
                continue
            self._asleep_until = 0.0
            try:
                self.drain(self._ripe(), self._arrived)
            except BaseException:  # never lose the thread: every call of the process depends on it
                log.exception("the detector thread failed on a batch")

    def _take(self) -> list[Job]:
        jobs = []
        while True:
            try:
                jobs.append(self._queue.get_nowait())
            except queue.Empty:
                return jobs

    def _ripe(self, urgent_only: bool = False) -> list[Job]:
        """Take the pending jobs to run now: with an urgent one among them, the jobs of the calls that have one (a
        call's earlier chunks first); else (a tick) every pending job, due or not, to share the wake-up."""
        lanes = {id(job.models) for job in self._pending if job.urgent}
        if not lanes and not urgent_only:
            jobs, self._pending = self._pending, []
            return jobs
        jobs = [job for job in self._pending if id(job.models) in lanes]
        self._pending = [job for job in self._pending if id(job.models) not in lanes]
        return jobs

    def _arrived(self) -> list[Job]:
        """The jobs of the calls that have an urgent chunk queued since the drain began (else none)."""
        if not self._wake.is_set():
            return []
        self._wake.clear()
        self._pending += self._take()
        return self._ripe(urgent_only=True)

    def drain(self, jobs: list[Job], arrived: Callable[[], list[Job]] | None = None) -> list[Finished]:
        """Run ``jobs`` to completion (calls' jobs in order), Silero batched across calls, delivering each result on
        its job's loop (an urgent one at once). Returns ``(job, result, exception)`` for every chunk, in the order
        they finished.

        Every chunk's VAD windows are decided (and handed to ``Job.early``) before the keyword spotter runs on any
        chunk, so a pause never waits for PocketSphinx on another call's speech; between one chunk's spotting and the
        next, ``arrived()`` may hand over chunks that came meanwhile, whose windows then go first too.
        """
        lanes: dict[int, _Lane] = {}
        done = _Results()
        waiting: list[tuple[_Lane, VadQuery]] = []
        spotting: deque[_Lane] = deque()

        def route(lane: _Lane, step: VadQuery | bool) -> None:
            if isinstance(step, VadQuery):
                waiting.append((lane, step))
            elif step:
                spotting.append(lane)

        def add(new: list[Job]) -> bool:
            idle = []
            for job in new:
                lane = lanes.setdefault(id(job.models), _Lane())
                if lane.gen is None and not lane.jobs:
                    idle.append(lane)
                lane.jobs.append(job)
            queued = len(waiting)
            for lane in idle:
                route(lane, self._advance(lane, None, done))
            return len(waiting) > queued

        add(jobs)
        while waiting or spotting:
            while waiting:
                batch, waiting = waiting[:self.max_batch], waiting[self.max_batch:]
                t0 = time.perf_counter()
                try:
                    answers = silero_batch([q for _, q in batch])
                except BaseException as exc:
                    for lane, _ in batch:
                        self._fail(lane, exc, done)
                        route(lane, self._advance(lane, None, done))
                    continue
                share_ms = (time.perf_counter() - t0) * 1000 / len(batch)
                self.runs += 1
                self.windows += len(batch)
                for (lane, _), (prob, state) in zip(batch, answers, strict=True):
                    route(lane, self._advance(lane, VadAnswer(prob, state, share_ms), done))
            while spotting:
                done.wait_applied(APPLY_WAIT_SECS)
                if arrived is not None and add(arrived()):
                    break  # their windows first
                lane = spotting.popleft()
                route(lane, self._advance(lane, None, done))
        done.flush()
        return done.finished()

    def _advance(self, lane: _Lane, answer: VadAnswer | None, done: _Results) -> VadQuery | bool:
        """Step the lane's current job with ``answer`` (or start its next job) until it needs Silero (the query),
        has its chunk's windows decided (True: they are handed on, and the spotter's work waits for the next
        call), or has no job left (False)."""
        while True:
            if lane.gen is None:
                if not lane.jobs:
                    return False
                job = lane.job = lane.jobs.popleft()
                if job.pcm is None:
                    try:
                        if job.action is not None:
                            job.action()
                    except Exception:
                        log.exception("a detector clean-up failed")
                    lane.job = None
                    continue
                lane.gen = job.models.steps(job.pcm, job.hangover_ms, job.kws_enabled, job.outbound_samples)
                answer = None
            assert lane.job is not None
            try:
                step = next(lane.gen) if answer is None else lane.gen.send(answer)
            except StopIteration as stop:
                done.add(lane.job, stop.value, None)
            except Exception as exc:
                done.add(lane.job, None, exc)
            else:
                if isinstance(step, VadQuery):
                    return step
                done.add_windows(lane.job, step)
                return True
            lane.gen, lane.job, answer = None, None, None

    def _fail(self, lane: _Lane, exc: BaseException, done: _Results) -> None:
        assert lane.job is not None and lane.gen is not None
        lane.gen.close()
        done.add(lane.job, None, exc)
        lane.gen, lane.job = None, None

    @staticmethod
    def deliver(done: list[_Delivery], ack: bool = False) -> list[threading.Event]:
        """Hand results to their loops: one ``call_soon_threadsafe`` per loop, in order. With ``ack``: an event per
        loop, set once that loop has applied them."""
        by_loop: dict[asyncio.AbstractEventLoop, list[_Delivery]] = {}
        for item in done:
            if item[0].loop is not None and item[0].deliver is not None:
                by_loop.setdefault(item[0].loop, []).append(item)
        acks = []
        for loop, items in by_loop.items():
            applied = threading.Event() if ack else None
            try:
                loop.call_soon_threadsafe(_deliver_all, items, applied)
            except RuntimeError:  # that loop has closed: its calls are gone
                continue
            if applied is not None:
                acks.append(applied)
        return acks


def _deliver_all(items: list[_Delivery], applied: threading.Event | None) -> None:
    for job, result, exc, early in items:
        try:
            if early:
                assert job.early is not None and result is not None
                job.early(result)
            else:
                assert job.deliver is not None
                job.deliver(result, exc)
        except Exception:
            log.exception("applying a detector result failed")
    if applied is not None:
        applied.set()


def detector_tick_ms() -> float:
    """``VOICEGATE_DETECTOR_TICK_MS`` (default 20): see :attr:`DetectorThread.tick_ms`."""
    return float(os.environ.get("VOICEGATE_DETECTOR_TICK_MS", "20"))


def detector_idle_tick_ms() -> float:
    """``VOICEGATE_DETECTOR_IDLE_TICK_MS`` (default 100; 0: the quiet tick): see
    :attr:`DetectorThread.idle_tick_ms`."""
    return float(os.environ.get("VOICEGATE_DETECTOR_IDLE_TICK_MS", "100"))


@functools.cache
def detector_thread() -> DetectorThread:
    """The process's detector thread, shared by every live call (started on the first chunk)."""
    return DetectorThread()
