"""The agent interface and the reply-task plumbing shared by every agent."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterable, Iterable
from typing import Protocol

from voicegate.gate.controller import DuplexController, HeardText
from voicegate.tasks import TaskOwner


class Agent(Protocol):
    """What the session drives: greet on connect, answer a finished user turn, be cancelled on a stop."""

    def start(self) -> None:
        """The call is connected: greet the caller."""

    def user_turn(self, text: str) -> None:
        """The user finished a meaningful utterance (already gated)."""

    def cancel(self) -> None:
        """The user took the floor: cancel the reply in flight at once."""

    async def aclose(self) -> None:
        """Release what the agent holds (HTTP clients)."""


class ReplyRunner:
    """Runs one reply at a time as a named task; a new reply or a stop cancels the previous one."""

    def __init__(self, controller: DuplexController, tasks: TaskOwner) -> None:
        self.controller = controller
        self.tasks = tasks
        self.history: list[dict[str, object]] = []
        self._current: asyncio.Task[bool] | None = None
        self._ids = itertools.count(1)
        controller.on_stop = self.cancel
        controller.on_reply_heard = self._record

    def say(self, sentences: Iterable[str] | AsyncIterable[str],
            requested_ms: float | None = None) -> asyncio.Task[bool]:
        """Speak ``sentences`` as a new reply (cancelling the one in flight).

        ``requested_ms`` (media time the user's turn ended) makes the first ``bot.speaking`` event of the reply
        carry ``since_user_turn_ms``.
        """
        self.cancel()
        reply_id = f"r{next(self._ids)}"
        task = self.tasks.spawn(self.controller.speak(sentences, reply_id, requested_ms), f"reply-{reply_id}")
        self._current = task
        return task

    def cancel(self) -> None:
        """Cancel the reply in flight, if any."""
        if self._current is not None and not self._current.done():
            self._current.cancel()
        self._current = None

    def _record(self, heard: HeardText) -> None:
        entry: dict[str, object] = {"role": "assistant", "content": heard.text}
        if heard.interrupted:
            entry["interrupted"] = True
        if heard.text or heard.interrupted:
            self.history.append(entry)
