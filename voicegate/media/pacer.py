"""One clock for the bot's voice on every socket call of an event loop.

A WebRTC call's frames are pulled by aiortc (:meth:`PlayoutTrack.recv <voicegate.media.playout.PlayoutTrack.recv>`,
one timer per call). A socket call (``/ws``, ``/twilio``) has no such pull: it used to run a task per call that slept
until each 20 ms frame was due, then handed the frame to a writer task — two wake-ups per call per frame. The pacer
runs one task per loop instead: every 20 ms tick of its grid it takes the next frame of **every** registered call
(:meth:`PlayoutTrack.next_frame`) and hands it to that call's sink, synchronously. A call's first frame goes out on the
tick after it registers and every later one exactly one frame after the last, so a pause is still heard on the very
next frame; the tick a frame was due and the tick it went out differ only when the loop itself was late (then the
frames that fell due go out at once, and :attr:`PlayoutTrack.late_observer` hears how late).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from voicegate.media.playout import PlayoutTrack

log = logging.getLogger(__name__)

FrameSink = Callable[[np.ndarray], None]
"""Receives each frame of a call's bot audio (s16 at the playout's rate) on the loop, at its media time."""


@dataclass(eq=False)
class PacedCall:
    """A call the pacer plays out (returned by :meth:`FramePacer.add`)."""

    pacer: FramePacer
    playout: PlayoutTrack
    sink: FrameSink

    def stop(self) -> None:
        """No more frames for this call (idempotent)."""
        self.pacer.remove(self)


class FramePacer:
    """Plays out every registered call's bot audio on one 20 ms grid (see the module's docstring)."""

    def __init__(self, frame_ms: int = 20) -> None:
        self.frame_ms = frame_ms
        self._calls: list[PacedCall] = []
        self._task: asyncio.Task[None] | None = None

    def add(self, playout: PlayoutTrack, sink: FrameSink) -> PacedCall:
        """Start playing ``playout`` out to ``sink`` (on the running loop) from the next tick, until
        :meth:`remove` (:meth:`PacedCall.stop`) or until the track stops."""
        if playout.options.frame_ms != self.frame_ms:
            raise ValueError(f"a {self.frame_ms} ms pacer cannot play {playout.options.frame_ms} ms frames")
        call = PacedCall(self, playout, sink)
        self._calls.append(call)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="voicegate-pacer")
        return call

    def remove(self, call: PacedCall) -> None:
        """Stop playing ``call`` out (idempotent)."""
        if call in self._calls:
            self._calls.remove(call)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        frame_secs = self.frame_ms / 1000
        due = loop.time()
        while self._calls:
            due += frame_secs
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            late_secs = max(0.0, loop.time() - due)
            for call in list(self._calls):
                if call.playout.readyState != "live":
                    self.remove(call)
                    continue
                try:
                    call.sink(call.playout.next_frame())
                except Exception:
                    log.exception("a call's frame sink failed: that call is no longer paced")
                    self.remove(call)
                    continue
                if call.playout.late_observer is not None:
                    call.playout.late_observer(late_secs)


_pacers: dict[tuple[asyncio.AbstractEventLoop, int], FramePacer] = {}


def frame_pacer(frame_ms: int = 20) -> FramePacer:
    """The running loop's pacer for ``frame_ms`` frames (one per loop and frame length)."""
    loop = asyncio.get_running_loop()
    pacer = _pacers.get((loop, frame_ms))
    if pacer is None:
        for old in [key for key in _pacers if key[0].is_closed()]:
            del _pacers[old]
        pacer = _pacers[loop, frame_ms] = FramePacer(frame_ms)
    return pacer
