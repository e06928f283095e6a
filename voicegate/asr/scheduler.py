"""Scheduling transcript requests across calls, live (worker threads) or simulated (a media clock).

One :class:`AsrQueue` decides what is decoded next, under the same rules in the server and in the benchmark:

- a call has at most one queued partial and a short queue of finals; a newer partial *supersedes* the queued
  older one, and a final drops the queued partial of its segment (it covers the same audio and more);
- finals go before partials (a final resumes or ends a turn; a partial can only confirm a stop);
- calls are served round-robin, and a call never has two decodes running at once;
- a request that waited longer than ``max_wait_ms`` is dropped and reported ``overloaded``, so the gate falls
  back to VAD and keyword rules instead of waiting on a transcript that comes too late.

:class:`AsrService` runs the queue on worker threads (one decode each) for ``voicegate serve``;
:class:`SimulatedAsr` runs it on the benchmark's media clock, where a request waits for the decodes before it
exactly as it would live.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from voicegate.asr.base import Transcript, UtteranceAsr

log = logging.getLogger(__name__)

FINALS_PER_CALL = 2


@dataclass
class AsrRequest:
    """One decode a gate asked for."""

    call_id: str
    segment_id: int
    end_samples: int
    final: bool
    """Covers the segment to its (likely) end: the gate treats the result as final if nothing was voiced since."""
    audio: np.ndarray
    deliver: Callable[[AsrRequest, Transcript | None, str | None], None]
    """Called once: ``(request, transcript, None)`` or ``(request, None, cause)`` with cause ``superseded``,
    ``overloaded``, ``closed`` or ``error``."""
    requested_ms: float = 0.0
    started_ms: float | None = None
    error: str | None = None
    """What the engine raised, when the cause is ``error``."""


@dataclass
class _Slots:
    partial: AsrRequest | None = None
    finals: deque[AsrRequest] = field(default_factory=deque)
    running: int = 0


class AsrQueue:
    """Per-call bounded slots with supersession, finals first, round-robin across calls. Not thread-safe."""

    def __init__(self, max_wait_ms: float) -> None:
        self.max_wait_ms = max_wait_ms
        self._calls: OrderedDict[str, _Slots] = OrderedDict()

    def __len__(self) -> int:
        return sum((s.partial is not None) + len(s.finals) for s in self._calls.values())

    def submit(self, req: AsrRequest) -> list[tuple[AsrRequest, str]]:
        """Queue ``req``; returns the requests it displaced, with why."""
        slots = self._calls.setdefault(req.call_id, _Slots())
        dropped: list[tuple[AsrRequest, str]] = []
        if req.final:
            if slots.partial is not None and slots.partial.segment_id == req.segment_id:
                dropped.append((slots.partial, "superseded"))
                slots.partial = None
            for old in [f for f in slots.finals if f.segment_id == req.segment_id and f.end_samples <= req.end_samples]:
                slots.finals.remove(old)
                dropped.append((old, "superseded"))
            slots.finals.append(req)
            while len(slots.finals) > FINALS_PER_CALL:
                dropped.append((slots.finals.popleft(), "overloaded"))
        elif any(f.segment_id == req.segment_id for f in slots.finals):
            dropped.append((req, "superseded"))
        else:
            if slots.partial is not None:
                dropped.append((slots.partial, "superseded"))
            slots.partial = req
        return dropped

    def take(self, now_ms: float) -> tuple[AsrRequest | None, list[tuple[AsrRequest, str]]]:
        """The next request to decode (or None), and the requests that expired waiting."""
        expired = self._expire(now_ms)
        for want_final in (True, False):
            for call_id, slots in list(self._calls.items()):
                if slots.running:
                    continue
                req = (slots.finals.popleft() if slots.finals else None) if want_final else slots.partial
                if req is None:
                    continue
                if not want_final:
                    slots.partial = None
                slots.running += 1
                req.started_ms = now_ms
                self._calls.move_to_end(call_id)  # round-robin: this call goes to the back
                return req, expired
        return None, expired

    def done(self, req: AsrRequest) -> None:
        """A decode of ``req`` has finished (or failed)."""
        slots = self._calls.get(req.call_id)
        if slots is None:
            return
        slots.running = max(0, slots.running - 1)
        if not slots.running and slots.partial is None and not slots.finals:
            del self._calls[req.call_id]

    def drop_call(self, call_id: str) -> list[tuple[AsrRequest, str]]:
        """Forget a call's queued requests (it ended)."""
        slots = self._calls.pop(call_id, None)
        if slots is None:
            return []
        out = [(r, "closed") for r in ([slots.partial] if slots.partial else []) + list(slots.finals)]
        if slots.running:
            self._calls[call_id] = _Slots(running=slots.running)
        return out

    def _expire(self, now_ms: float) -> list[tuple[AsrRequest, str]]:
        out: list[tuple[AsrRequest, str]] = []
        for slots in self._calls.values():
            if slots.partial is not None and now_ms - slots.partial.requested_ms > self.max_wait_ms:
                out.append((slots.partial, "overloaded"))
                slots.partial = None
            while slots.finals and now_ms - slots.finals[0].requested_ms > self.max_wait_ms:
                out.append((slots.finals.popleft(), "overloaded"))
        return out


class AsrService:
    """The process's transcript workers: ``workers`` threads decode from one :class:`AsrQueue`.

    ``deliver`` callbacks run on a worker thread; the live driver hops back to its event loop itself.
    """

    def __init__(self, asr: UtteranceAsr, workers: int, max_wait_ms: float) -> None:
        self.asr = asr
        self.queue = AsrQueue(max_wait_ms)
        self._cond = threading.Condition()
        self._closed = False
        self.busy_ms = 0.0
        self.decodes = 0
        self.dropped: dict[str, int] = {}
        self._threads = [threading.Thread(target=self._work, name=f"voicegate-asr-{i}", daemon=True)
                         for i in range(max(1, workers))]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def now_ms() -> float:
        """The queue's clock."""
        return time.monotonic() * 1000.0

    def submit(self, req: AsrRequest) -> None:
        """Queue a request (any thread)."""
        req.requested_ms = self.now_ms()
        with self._cond:
            dropped = self.queue.submit(req)
            self._cond.notify()
        self._report(dropped)

    def drop_call(self, call_id: str) -> None:
        """Discard what a finished call still had queued."""
        with self._cond:
            dropped = self.queue.drop_call(call_id)
        self._report(dropped)

    def close(self) -> None:
        """Stop the workers once their current decode ends."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _report(self, dropped: list[tuple[AsrRequest, str]]) -> None:
        for req, cause in dropped:
            self.dropped[cause] = self.dropped.get(cause, 0) + 1
            try:
                req.deliver(req, None, cause)
            except Exception:
                log.exception("ASR drop callback failed")

    def _work(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return
                    req, expired = self.queue.take(self.now_ms())
                    if req is not None or expired:
                        break
                    self._cond.wait()
            self._report(expired)
            if req is None:
                continue
            try:
                transcript = self.asr.transcribe(req.audio)
                cause = None
            except Exception as exc:
                log.exception("ASR failed on call %s segment %d", req.call_id, req.segment_id)
                transcript, cause, req.error = None, "error", f"{type(exc).__name__}: {exc}"
            with self._cond:
                self.queue.done(req)
                self.decodes += 1
                self.busy_ms += transcript.compute_ms if transcript is not None else 0.0
                self._cond.notify()
            try:
                req.deliver(req, transcript, cause)
            except Exception:
                log.exception("ASR result callback failed")


class SimulatedAsr:
    """The same queue on a simulated media clock, for the benchmark and the tests.

    Each worker is busy from the moment it takes a request until ``compute_ms`` (measured on this machine) later;
    a request therefore waits for the decodes queued before it, and its result is delivered when the decode
    would have finished.
    """

    def __init__(self, asr: UtteranceAsr, workers: int, max_wait_ms: float) -> None:
        self.asr = asr
        self.queue = AsrQueue(max_wait_ms)
        self._free_at = [0.0] * max(1, workers)
        self._due: list[tuple[float, AsrRequest, Transcript | None, str | None]] = []
        self.now_ms = 0.0
        self.busy_ms = 0.0

    def submit(self, req: AsrRequest) -> None:
        """Queue a request at the current media time."""
        req.requested_ms = self.now_ms
        for old, cause in self.queue.submit(req):
            self._due.append((self.now_ms, old, None, cause))
        self._start(self.now_ms)

    def advance(self, until_ms: float) -> None:
        """Run the workers up to ``until_ms`` and deliver every result due by then, in time order."""
        while True:
            self._start(until_ms)
            self._due.sort(key=lambda item: item[0])
            if not self._due or self._due[0][0] > until_ms:
                break
            ready_ms, req, transcript, cause = self._due.pop(0)
            if cause is None:
                self.queue.done(req)
            self.now_ms = max(self.now_ms, ready_ms)
            req.deliver(req, transcript, cause)
        self.now_ms = max(self.now_ms, until_ms)

    def _start(self, until_ms: float) -> None:
        for i, free_at in enumerate(self._free_at):
            if free_at > until_ms:
                continue
            at = max(free_at, self.now_ms)
            req, expired = self.queue.take(at)
            for old, cause in expired:
                self._due.append((at, old, None, cause))
            if req is None:
                continue
            start = max(at, req.requested_ms)
            transcript = self.asr.transcribe(req.audio)
            self.busy_ms += transcript.compute_ms
            self._free_at[i] = start + transcript.compute_ms
            self._due.append((self._free_at[i], req, transcript, None))
