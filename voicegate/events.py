"""Events sent to the client on the ``events`` data channel and to the log.

Every event is a JSON object with ``type`` and ``t_ms`` (media time of the call in milliseconds, counted from
the moment the session was created) plus type-specific fields; see the README for the schema.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

EVENT_TYPES = frozenset(
    {
        "session.started",
        "session.ended",
        "bot.speaking",
        "bot.paused",
        "bot.resumed",
        "bot.stopped",
        "bot.done",
        "user.speech_started",
        "user.speech_ended",
        "gate.verdict",
        "asr.partial",
        "asr.final",
        "user.turn",
        "agent.reply",
        "error",
    }
)

Listener = Callable[[dict[str, Any]], None]


class MediaClock:
    """Milliseconds since the call began, on a monotonic clock."""

    def __init__(self, start_secs: float | None = None) -> None:
        self.start_secs = time.monotonic() if start_secs is None else start_secs

    def now_ms(self) -> float:
        """Media time now, in ms."""
        return (time.monotonic() - self.start_secs) * 1000.0


class SimClock(MediaClock):
    """A media clock that only moves when told to (tests, benchmark)."""

    def __init__(self) -> None:
        super().__init__(0.0)
        self.t_ms = 0.0

    def now_ms(self) -> float:
        """The simulated time."""
        return self.t_ms


class EventBus:
    """Fans events out to listeners (the data channel, tests, metrics) and keeps a bounded backlog.

    Events emitted before the data channel opens are kept (up to ``backlog`` of them) and replayed to a listener
    added later with ``replay=True``.
    """

    def __init__(self, clock: MediaClock, call_id: str = "-", backlog: int = 256) -> None:
        self.clock = clock
        self.call_id = call_id
        self._listeners: list[Listener] = []
        self._backlog: deque[dict[str, Any]] = deque(maxlen=backlog)

    def add_listener(self, listener: Listener, replay: bool = False) -> None:
        """Subscribe ``listener``; with ``replay`` it first receives the backlog."""
        if replay:
            for event in list(self._backlog):
                listener(event)
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        """Unsubscribe ``listener`` (no error if absent)."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    @property
    def history(self) -> list[dict[str, Any]]:
        """The most recent events, oldest first."""
        return list(self._backlog)

    def emit(self, type_: str, t_ms: float | None = None, **fields: Any) -> dict[str, Any]:
        """Build, log and deliver one event."""
        if type_ not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type_!r}")
        event: dict[str, Any] = {"type": type_, "t_ms": round(self.clock.now_ms() if t_ms is None else t_ms, 1)}
        event.update(fields)
        self._backlog.append(event)
        log.info("call=%s event %s", self.call_id, json.dumps(event, default=str))
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("call=%s event listener failed", self.call_id)
        return event
