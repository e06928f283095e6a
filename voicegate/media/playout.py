"""The outbound playout track: paced 20 ms frames, pause/resume from the exact sample, clear with a generation."""

from __future__ import annotations

import asyncio
import fractions
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame

from voicegate.config import PlayoutOptions


@dataclass(frozen=True)
class UtteranceReport:
    """How much of one utterance the caller actually heard."""

    utterance_id: str
    played_samples: int
    total_samples: int
    sample_rate: int
    interrupted: bool

    @property
    def played_ms(self) -> float:
        """Played duration in ms."""
        return 1000.0 * self.played_samples / self.sample_rate


class PlayoutListener(Protocol):
    """Hooks the playout track calls from inside ``recv()`` (on the event loop), stamped in track samples."""

    def on_utterance_started(self, utterance_id: str, at_samples: int) -> None: ...

    def on_utterance_finished(self, report: UtteranceReport, at_samples: int) -> None: ...


@dataclass
class _Utterance:
    utterance_id: str
    pcm: np.ndarray
    generation: int
    offset: int = 0
    played: int = 0
    started: bool = False


class PlayoutTrack(MediaStreamTrack):
    """An audio track whose content the duplex controller fully controls.

    It keeps its own media clock (pts counts samples, ``recv`` sleeps until ``start + pts / sample_rate``), sends
    silence while idle or paused and never ends on its own. ``pause()`` keeps the queue and the position;
    ``resume()`` continues from the exact sample with a short fade-in; ``clear()`` drops everything queued and
    bumps :attr:`generation` so a ``push`` made for an older generation is refused.
    """

    kind = "audio"

    def __init__(self, options: PlayoutOptions | None = None, listener: PlayoutListener | None = None,
                 history_ms: int = 2000) -> None:
        super().__init__()
        self.options = options or PlayoutOptions()
        self.sample_rate = self.options.sample_rate
        self.frame_samples = self.sample_rate * self.options.frame_ms // 1000
        self.listener = listener
        self.frame_sink: Callable[[np.ndarray], None] | None = None
        self.late_observer: Callable[[float], None] | None = None
        """Called with how late (seconds, ≥ 0) each frame was produced against its media-clock deadline."""
        """Called with every frame sent (the echo guard's reference)."""
        self._fade_samples = max(1, int(self.sample_rate * self.options.fade_ms / 1000))
        self._queue: deque[_Utterance] = deque()
        self._generation = 0
        self._paused = False
        self._pause_pending = False
        self._fade_in_left = 0
        self._start_secs: float | None = None
        self._pts = 0
        self._emitted_samples = 0
        self._history = np.zeros(self.sample_rate * history_ms // 1000, dtype=np.int16)
        self._time_base = fractions.Fraction(1, self.sample_rate)
        self.next_rewind_ms: float | None = None
        """Set by a transport whose far end played less than was sent (a phone line's buffer, cleared on pause):
        the next :meth:`resume` rewinds this much instead of ``resume_rewind_ms``."""

    def set_sample_rate(self, sample_rate: int) -> None:
        """Play out at another rate; only before the first frame, with nothing queued (a transport that learns its
        client's rate from the client's first message plays at that rate and resamples nothing)."""
        if self._start_secs is not None or self._queue or self._emitted_samples:
            raise RuntimeError("the playout rate can only change before the first frame")
        history_ms = 1000 * len(self._history) // self.sample_rate
        self.options = replace(self.options, sample_rate=sample_rate)
        self.sample_rate = sample_rate
        self.frame_samples = sample_rate * self.options.frame_ms // 1000
        self._fade_samples = max(1, int(sample_rate * self.options.fade_ms / 1000))
        self._history = np.zeros(sample_rate * history_ms // 1000, dtype=np.int16)
        self._time_base = fractions.Fraction(1, sample_rate)

    # -- control (called by the duplex controller only) -------------------------------------------------------

    @property
    def generation(self) -> int:
        """Incremented by every :meth:`clear`."""
        return self._generation

    @property
    def paused(self) -> bool:
        """True between :meth:`pause` and :meth:`resume` / :meth:`clear`."""
        return self._paused or self._pause_pending

    @property
    def queued_samples(self) -> int:
        """Samples still to play."""
        return sum(len(u.pcm) - u.offset for u in self._queue)

    @property
    def speaking(self) -> bool:
        """True when audio is queued and not paused: the next frames carry the bot's voice."""
        return bool(self._queue) and not self.paused

    @property
    def emitted_samples(self) -> int:
        """Samples sent so far (speech and silence): the track's media clock."""
        return self._emitted_samples

    def push(self, pcm: np.ndarray, utterance_id: str, generation: int | None = None) -> bool:
        """Queue mono s16 ``pcm`` at :attr:`sample_rate` as one utterance.

        Returns False (and queues nothing) when ``generation`` is given and older than the current one, so a
        synthesis that finishes after a stop can never play.
        """
        if generation is not None and generation != self._generation:
            return False
        data = np.ascontiguousarray(pcm, dtype=np.int16).reshape(-1)
        if data.size:
            self._queue.append(_Utterance(utterance_id, data, self._generation))
        return True

    def pause(self) -> bool:
        """Stop sending the bot's audio at the next frame (with a short fade-out); keep queue and position."""
        if self.paused:
            return False
        self._pause_pending = True
        return True

    def resume(self, rewind_ms: float | None = None) -> bool:
        """Continue from the paused sample, optionally ``rewind_ms`` earlier, fading in."""
        if not self.paused:
            return False
        self._paused = False
        self._pause_pending = False
        if rewind_ms is None:
            rewind_ms = self.options.resume_rewind_ms if self.next_rewind_ms is None else self.next_rewind_ms
        self.next_rewind_ms = None
        rewind = rewind_ms
        if self._queue and rewind > 0:
            head = self._queue[0]
            head.offset = max(0, head.offset - int(self.sample_rate * rewind / 1000))
        self._fade_in_left = self._fade_samples
        return True

    def clear(self) -> list[UtteranceReport]:
        """Drop everything queued, leave the paused state and bump the generation.

        Returns a report per dropped utterance (how much of it was heard).
        """
        reports = [self._report(u, interrupted=True) for u in self._queue]
        self._queue.clear()
        self._generation += 1
        self._paused = False
        self._pause_pending = False
        self._fade_in_left = 0
        for report in reports:
            if self.listener is not None:
                self.listener.on_utterance_finished(report, self._emitted_samples)
        return reports

    def recent_output(self, samples: int) -> np.ndarray:
        """The last ``samples`` samples sent (silence included), oldest first."""
        size = len(self._history)
        samples = min(samples, size, self._emitted_samples)
        end = self._emitted_samples % size
        return np.roll(self._history, -end)[size - samples:] if samples else self._history[:0].copy()

    # -- media ------------------------------------------------------------------------------------------------

    def next_frame(self) -> np.ndarray:
        """Produce the next 20 ms of output without pacing (``recv`` and the benchmark call this)."""
        n = self.frame_samples
        if self._paused or not (self._queue or self._pause_pending):
            return self._emit(np.zeros(n, dtype=np.int16))  # silence: nothing to mix, fade or clip
        out = np.zeros(n, dtype=np.float32)
        limit = min(n, self._fade_samples) if self._pause_pending else n
        filled = 0
        while filled < limit and self._queue:
            utt = self._queue[0]
            if not utt.started:
                utt.started = True
                if self.listener is not None:
                    self.listener.on_utterance_started(utt.utterance_id, self._emitted_samples + filled)
            take = min(limit - filled, len(utt.pcm) - utt.offset)
            out[filled:filled + take] = utt.pcm[utt.offset:utt.offset + take]
            utt.offset += take
            utt.played = max(utt.played, utt.offset)
            filled += take
            if utt.offset >= len(utt.pcm):
                self._queue.popleft()
                if self.listener is not None:
                    self.listener.on_utterance_finished(
                        self._report(utt, interrupted=False), self._emitted_samples + filled)
        if self._fade_in_left and filled:
            k = min(filled, self._fade_in_left)
            done = self._fade_samples - self._fade_in_left
            out[:k] *= np.arange(done + 1, done + k + 1, dtype=np.float32) / self._fade_samples
            self._fade_in_left -= k
        if self._pause_pending:
            out[:filled] *= np.linspace(1.0, 0.0, filled, dtype=np.float32) if filled else 1.0
            self._pause_pending = False
            self._paused = True
        return self._emit(out)

    def _emit(self, out: np.ndarray) -> np.ndarray:
        pcm = out if out.dtype == np.int16 else np.clip(out, -32768, 32767, out=out).astype(np.int16)
        n, size = len(pcm), len(self._history)
        start = self._emitted_samples % size
        first = min(n, size - start)
        self._history[start:start + first] = pcm[:first]
        self._history[:n - first] = pcm[first:]
        self._emitted_samples += n
        if self.frame_sink is not None:
            self.frame_sink(pcm)
        return pcm

    def _report(self, utt: _Utterance, interrupted: bool) -> UtteranceReport:
        return UtteranceReport(utt.utterance_id, utt.played, len(utt.pcm), self.sample_rate, interrupted)

    async def recv(self) -> AudioFrame:
        """Return the next frame at its media time (aiortc's pull model)."""
        pcm = await self.recv_pcm()
        frame = AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.sample_rate
        frame.pts = self._pts
        frame.time_base = self._time_base
        return frame

    async def recv_pcm(self) -> np.ndarray:
        """:meth:`recv` without the ``AudioFrame``: the next 20 ms of s16 samples at their media time (for the
        transports that send samples or encode them themselves; :attr:`pts` is the frame's first sample)."""
        if self.readyState != "live":
            raise MediaStreamError
        if self._start_secs is None:
            self._start_secs = time.time()
        else:
            self._pts += self.frame_samples
            wait = self._start_secs + self._pts / self.sample_rate - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if self.late_observer is not None:
                self.late_observer(max(0.0, time.time() - self._start_secs - self._pts / self.sample_rate))
        return self.next_frame()

    @property
    def pts(self) -> int:
        """The first sample of the last frame returned, in samples since the first frame."""
        return self._pts

