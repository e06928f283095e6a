"""voicegate in a LiveKit Agents 1.8.9 ``AgentSession``: voicegate decides instead of ``min_duration`` /
``false_interruption_timeout``.

    session = AgentSession(llm=..., tts=..., vad=None, turn_handling={"turn_detection": "manual"})
    await session.start(agent, room=ctx.room)
    gate = await VoicegateSession.attach(session)          # the one line

- The session's audio input is teed (:class:`VoicegateAudioInput`): every frame LiveKit reads from the caller also
  goes, in order, to the reflex.
- :class:`VoicegateAudioOutput` is inserted at the bottom of the session's audio output chain (below the transcript
  synchronizer, above the room's sink) and becomes the bot's playout clock: LiveKit captures the TTS audio faster
  than real time, so it is held in the reflex and released to the sink ``tick_ms`` at a time; while the caller
  makes a sound nothing is released (the bot is paused, its position kept) and the top of the chain is paused too,
  so the transcript stays in step; a backchannel / noise / echo resumes both from the same sample.
- A real interruption calls LiveKit's own ``session.interrupt()`` (the reply, the chat context and the transcript
  behave as LiveKit users expect); the caller's turn goes to the LLM with ``session.generate_reply(user_input=...)``.
- LiveKit's own audio-activity interruptions must be off while voicegate decides: ``vad=None`` and
  ``turn_handling={"turn_detection": "manual"}`` (LiveKit then never pauses or interrupts on its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from livekit import rtc
from livekit.agents.voice.io import AudioInput, AudioOutput, AudioOutputCapabilities, _AudioSinkProxy

from voicegate.asr.scheduler import AsrService
from voicegate.config import GateOptions, PlayoutOptions
from voicegate.reflex import Reflex
from voicegate.tasks import TaskOwner

log = logging.getLogger(__name__)

TESTED_WITH = "livekit-agents==1.8.9"
INPUT_QUEUE_FRAMES = 100
"""Caller frames waiting for the reflex (2 s at 20 ms); beyond it the oldest are skipped, with a warning."""


@dataclass
class LiveKitStats:
    """What the integration did (tests and the benchmark read it)."""

    interruptions: int = 0
    """``session.interrupt()`` calls made on voicegate's stops."""
    turns: list[str] = field(default_factory=list)
    ticks: int = 0
    plumbing_cpu_s: float = 0.0
    """Thread CPU in the integration's own code (input tee, playout clock, output chain), models excluded."""
    input_dropped: int = 0


class VoicegateAudioInput(AudioInput):  # type: ignore[misc]
    """A tee on the session's audio input: LiveKit gets every frame, and so does the reflex."""

    def __init__(self, source: AudioInput, sink: Callable[[rtc.AudioFrame], None]) -> None:
        super().__init__(label="voicegate", source=source)
        self._sink = sink

    async def __anext__(self) -> rtc.AudioFrame:
        frame = await self.source.__anext__()
        self._sink(frame)
        return frame


class VoicegateAudioOutput(AudioOutput):  # type: ignore[misc]
    """The bot's playout clock between LiveKit's output chain and the sink (see the module's docstring).

    ``capture_frame`` queues the audio in the reflex; :meth:`tick` releases ``tick_ms`` of it to the sink, or holds
    it; ``flush`` is passed to the sink once the audio before it has been released; ``clear_buffer`` drops it.
    """

    def __init__(self, reflex: Reflex, sink: AudioOutput, stats: LiveKitStats, tick_ms: int = 20) -> None:
        super().__init__(label="voicegate", capabilities=AudioOutputCapabilities(pause=True), next_in_chain=sink,
                         sample_rate=reflex.bot_sample_rate)
        self.reflex = reflex
        self.stats = stats
        self.tick_ms = tick_ms
        self._flushes: deque[int] = deque()
        """Where each flush falls in the bot's audio (the reflex's ``bot_position`` when it came)."""
        self._sink_open = False
        """The sink has a segment that was captured into and not yet flushed."""
        self._owed_finish = 0
        """Segments flushed here that never reached the sink (all their audio dropped): finished by us."""
        self._discarding = False

    @property
    def sink(self) -> AudioOutput:
        """The next output in the chain."""
        assert self.next_in_chain is not None
        return self.next_in_chain

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        """Queue one frame of the bot's audio in the reflex (as fast as LiveKit makes it)."""
        await super().capture_frame(frame)
        if self._discarding:
            return
        t0 = time.thread_time()
        pcm = np.frombuffer(frame.data, dtype=np.int16)
        if frame.num_channels > 1:
            pcm = pcm.reshape(-1, frame.num_channels)[:, 0]
        self.reflex.feed_bot(pcm, frame.sample_rate)
        self.stats.plumbing_cpu_s += time.thread_time() - t0

    def flush(self) -> None:
        """The segment is complete: the sink is flushed when its last sample has been released."""
        super().flush()
        self._flushes.append(self.reflex.bot_position)
        if not self.reflex.queued_bot_samples:
            self._release_flushes()

    def clear_buffer(self) -> None:
        """Drop everything queued (LiveKit's own interruption, after voicegate's stop or for its own reasons)."""
        self._discarding = False
        self.reflex.clear_bot()
        self._flushes.clear()
        if self._sink_open:
            self._sink_open = False
            self.sink.flush()  # a sink ends a segment on flush; a clear alone would leave it open
            self.sink.clear_buffer()
        elif self._pending_playback_count > 0:
            # Nothing of this segment reached the sink: it will never report it, so it is finished here.
            self.on_playback_finished(playback_position=0.0, interrupted=True)

    def discard_until_clear(self) -> None:
        """voicegate stopped the bot: audio still arriving belongs to the stopped reply."""
        self._discarding = True

    def _release_flushes(self) -> None:
        played = self.reflex.played_bot_samples
        while self._flushes and (self._flushes[0] <= played or not self.reflex.queued_bot_samples):
            self._flushes.popleft()
            if self._sink_open:
                self._sink_open = False
                self.sink.flush()
            elif self._pending_playback_count > 0:
                self.on_playback_finished(playback_position=0.0, interrupted=False)

    async def tick(self) -> None:
        """One tick of the playout clock: release ``tick_ms`` of the bot's audio to the sink, or hold it."""
        t0 = time.thread_time()
        reflex = self.reflex
        self.stats.ticks += 1
        frame_ms = 1000 * reflex.frame_samples // reflex.bot_sample_rate
        before = reflex.played_bot_samples
        pcm = np.concatenate([reflex.next_bot_frame() for _ in range(max(1, self.tick_ms // frame_ms))])
        released = reflex.played_bot_samples - before
        if released > 0:
            self._sink_open = True
            frame = rtc.AudioFrame(data=pcm.tobytes(), sample_rate=reflex.bot_sample_rate, num_channels=1,
                                   samples_per_channel=len(pcm))
            self.stats.plumbing_cpu_s += time.thread_time() - t0
            await self.sink.capture_frame(frame)
            t0 = time.thread_time()
        self._release_flushes()
        self.stats.plumbing_cpu_s += time.thread_time() - t0


class VoicegateSession:
    """voicegate attached to one ``AgentSession`` (build it with :meth:`attach`)."""

    def __init__(self, session: Any, reflex: Reflex, *, tick_ms: int = 20, clock: bool = True,
                 deliver_turns: bool = True) -> None:
        self.session = session
        self.reflex = reflex
        self.stats = LiveKitStats()
        self.tick_ms = tick_ms
        self.deliver_turns = deliver_turns
        self.tasks = TaskOwner(f"voicegate-livekit-{reflex.call_id}")
        self.output: VoicegateAudioOutput | None = None
        self._clock = clock
        self._frames: asyncio.Queue[rtc.AudioFrame] = asyncio.Queue()
        self._closed = False

    @classmethod
    async def attach(cls, session: Any, options: GateOptions | None = None, *, reflex: Reflex | None = None,
                     asr: AsrService | None = None, tick_ms: int = 20, clock: bool = True,
                     deliver_turns: bool = True, playout: PlayoutOptions | None = None) -> VoicegateSession:
        """Put voicegate into a started (or about to start) ``AgentSession`` whose input and output audio are set.

        Args:
            session: the ``AgentSession`` (``vad=None``, ``turn_handling={"turn_detection": "manual"}``).
            options: the gate's thresholds.
            reflex: a reflex made by the caller (default: one at the audio sink's rate, 24 kHz when it takes any).
            asr: the transcript workers (default: the process's, shared by every session).
            tick_ms: audio released to the sink per tick of the playout clock.
            clock: run the real-time playout clock (False: call ``output.tick()`` yourself, e.g. a benchmark).
            deliver_turns: hand the caller's turns to the LLM (``session.generate_reply(user_input=...)``).
            playout: fades and frame length of the bot's audio.
        """
        tail = _tail(session)
        if reflex is None:
            rate = (tail.sample_rate if tail is not None else None) or 24_000
            reflex = Reflex(options, bot_sample_rate=rate, playout=playout)
        await reflex.start(asr)
        gate = cls(session, reflex, tick_ms=tick_ms, clock=clock, deliver_turns=deliver_turns)
        gate._install(tail)
        return gate

    def _install(self, tail: AudioOutput | None) -> None:
        session = self.session
        if session.input.audio is None or tail is None:
            raise RuntimeError("set the session's audio input and output (or start it with a room) before "
                               "attaching voicegate")
        session.input.audio = VoicegateAudioInput(session.input.audio, self._frame_in)
        self.output = VoicegateAudioOutput(self.reflex, tail, self.stats, self.tick_ms)
        session.output.replace_audio_tail(self.output)
        self.reflex.on_stop = self._on_stop
        self.reflex.on_turn = self._on_turn
        self.reflex.add_listener(self._on_event)
        self.tasks.spawn(self._feed(), "feed")
        if self._clock:
            self.tasks.spawn(self._run_clock(), "playout-clock")
        session.on("close", lambda _ev: self.tasks.spawn(self.aclose(), "close"))

    def _frame_in(self, frame: rtc.AudioFrame) -> None:
        if self._frames.qsize() >= INPUT_QUEUE_FRAMES:
            self._frames.get_nowait()
            self.stats.input_dropped += 1
            log.warning("voicegate: the reflex fell behind the caller's audio; a frame was skipped")
        self._frames.put_nowait(frame)

    async def _feed(self) -> None:
        while True:
            frames = [await self._frames.get()]
            while not self._frames.empty():  # behind real time: catch up in one step
                frames.append(self._frames.get_nowait())
            t0 = time.thread_time()
            rate = frames[0].sample_rate
            chunks: list[np.ndarray] = []
            for frame in frames:
                pcm = np.frombuffer(frame.data, dtype=np.int16)
                if frame.num_channels > 1:
                    pcm = pcm.reshape(-1, frame.num_channels)[:, 0]
                if frame.sample_rate != rate:
                    self.stats.plumbing_cpu_s += time.thread_time() - t0
                    await self.reflex.feed_user(np.concatenate(chunks), rate)
                    t0, rate, chunks = time.thread_time(), frame.sample_rate, []
                chunks.append(pcm)
            pcm = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
            self.stats.plumbing_cpu_s += time.thread_time() - t0
            await self.reflex.feed_user(pcm, rate)

    async def _run_clock(self) -> None:
        assert self.output is not None
        loop = asyncio.get_running_loop()
        start = loop.time()
        k = 0
        while True:
            k += 1
            await asyncio.sleep(max(0.0, start + k * self.tick_ms / 1000 - loop.time()))
            await self.output.tick()

    def _on_event(self, event: dict[str, Any]) -> None:
        top = self.session.output.audio
        if top is None:
            return
        # The output chain above the clock (the transcript synchronizer) is paused and resumed with the bot.
        if event["type"] == "bot.paused":
            top.pause()
        elif event["type"] == "bot.resumed":
            top.resume()

    def _on_stop(self) -> None:
        self.stats.interruptions += 1
        if self.output is not None:
            self.output.discard_until_clear()
        top = self.session.output.audio
        if top is not None:
            top.resume()  # the pause is over: LiveKit's interruption clears the chain from the top
        try:
            self.session.interrupt()
        except RuntimeError as exc:
            log.warning("voicegate: LiveKit refused the interruption: %s", exc)

    def _on_turn(self, text: str) -> None:
        self.stats.turns.append(text)
        if self.deliver_turns and text.strip():
            self.session.generate_reply(user_input=text)

    async def aclose(self) -> None:
        """Stop the clock and release the reflex (idempotent; also on the session's ``close``)."""
        if self._closed:
            return
        self._closed = True
        self.reflex.close()
        current = asyncio.current_task()
        for task in self.tasks.tasks:
            if task is not current:
                task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*(t for t in self.tasks.tasks if t is not current), return_exceptions=True)


def _tail(session: Any) -> AudioOutput | None:
    """The sink at the bottom of the session's audio output chain."""
    current = session.output.audio
    while current is not None:
        if isinstance(current, _AudioSinkProxy):
            return current.next_in_chain
        if current.next_in_chain is None:
            return current
        current = current.next_in_chain
    return None


__all__ = ["TESTED_WITH", "LiveKitStats", "VoicegateAudioInput", "VoicegateAudioOutput", "VoicegateSession"]
