"""One call without its transport: clock, events, playout, controller, gate and agent.

A transport adapter feeds it 16 kHz mono s16 PCM (:meth:`CallCore.feed`), carries the frames of its
:class:`~voicegate.media.playout.PlayoutTrack` and its events to the caller, says when the caller is connected
(:meth:`CallCore.connected`), and releases its own resources in :meth:`CallCore.close_transport`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from voicegate.agent.base import Agent, ReplyRunner
from voicegate.agent.demo import DemoAssistant
from voicegate.agent.llm import LlmAgent
from voicegate.asr.scheduler import AsrService
from voicegate.asr.turns import TurnService
from voicegate.config import PIPELINE_SAMPLE_RATE, GateOptions, Options, TurnOptions
from voicegate.events import EventBus, MediaClock
from voicegate.gate.controller import DuplexController
from voicegate.gate.driver import GateModels, LiveGateDriver, asr_service, turn_service
from voicegate.gate.relevance import RelevanceJudge
from voicegate.media.playout import PlayoutTrack
from voicegate.reflex import Reflex, shared_judge
from voicegate.tasks import TaskOwner
from voicegate.tts.base import Tts
from voicegate.tts.espeak import EspeakTts
from voicegate.tts.openai_tts import FallbackTts, OpenAiTts

log = logging.getLogger(__name__)


_models_lock = threading.Lock()


def shared_models(turn: TurnOptions) -> tuple[RelevanceJudge, AsrService, TurnService | None]:
    """The relevance judge, the reflex's transcript workers and the turn transcriber: loaded once per process
    (by the first caller; the others wait for it), shared by every call. Blocking: call it off the loop."""
    with _models_lock:
        return _load_models(turn)


@functools.cache
def _load_models(turn: TurnOptions) -> tuple[RelevanceJudge, AsrService, TurnService | None]:
    judge, service, turns = shared_judge(), asr_service(), turn_service(turn)
    warm = GateModels(GateOptions(), PIPELINE_SAMPLE_RATE)  # Silero's session and PocketSphinx's files, warm
    if warm.echo is not None:
        warm.echo.close()
    return judge, service, turns


class CallCore:
    """Everything one caller owns apart from the transport; :meth:`close` releases all of it (idempotent)."""

    transport = "none"
    """The adapter's name (``webrtc``, ``ws``, ``twilio``): a label on ``/metrics``."""
    playout_sample_rate: int | None = None
    """The rate the adapter carries the bot's voice at best (``None``: ``options.playout.sample_rate``)."""

    def __init__(self, options: Options, on_closed: Callable[[CallCore], None] | None = None,
                 call_id: str | None = None) -> None:
        self.call_id = call_id or uuid.uuid4().hex[:8]
        self.options = options
        self.clock = MediaClock()
        self.events = EventBus(self.clock, call_id=self.call_id)
        self.tasks = TaskOwner(f"call-{self.call_id}")
        playout = (options.playout if self.playout_sample_rate is None
                   else replace(options.playout, sample_rate=self.playout_sample_rate))
        self._clients: list[object] = []
        self.tts = self._make_tts(options, playout.sample_rate)
        self.reflex = Reflex(options.gate, playout=playout, call_id=self.call_id, events=self.events, tts=self.tts)
        """The call's reflex (voicegate's public library API): playout, controller, gate and drivers."""
        self.playout: PlayoutTrack = self.reflex.playout
        self.controller: DuplexController = self.reflex.controller
        self.runner = ReplyRunner(self.controller, self.tasks)
        self.agent: Agent = (LlmAgent(self.runner, self.events, options.agent) if options.agent.llm_configured
                             else DemoAssistant(self.runner, self.events))
        self.reflex.on_turn = self.agent.user_turn
        self.reflex.on_error = self._stage_warning
        self.cpu_observer: Callable[[str, float, float | None], None] | None = None
        """Set by the server: receives the compute of every stage (``/metrics``)."""
        self.lag_observer: Callable[[float], None] | None = None
        """Set by the server: ms from a could-be-speech chunk's arrival to its VAD windows applied (``/metrics``)."""
        self.received_samples = 0
        """16 kHz samples fed so far."""
        self.inbound_sum_squares = 0.0
        self._on_closed = on_closed
        self._started = False
        self.closed = False
        self._closing: asyncio.Future[None] | None = None

    @property
    def driver(self) -> LiveGateDriver | None:
        """The gate's live driver (None before :meth:`start_gate`, or once barge-in is off for this call)."""
        driver = self.reflex.driver
        return driver if isinstance(driver, LiveGateDriver) else None

    def _make_tts(self, options: Options, sample_rate: int) -> Tts:
        espeak = EspeakTts(sample_rate=sample_rate)
        if options.agent.tts == "pyttsx3":
            from voicegate.tts.pyttsx import PyttsxTts

            def pyttsx3_failed(exc: Exception) -> None:
                self.events.emit("error", stage="tts", cause=type(exc).__name__,
                                 message=f"pyttsx3 failed, using the espeak-ng command line: {exc}")

            return FallbackTts(PyttsxTts(sample_rate=sample_rate), espeak, pyttsx3_failed)
        if options.agent.tts != "openai" or not options.agent.llm_configured:
            return espeak
        import openai

        client = openai.AsyncOpenAI(api_key=options.agent.api_key or "not-needed", base_url=options.agent.base_url,
                                    max_retries=0, timeout=15.0)
        self._clients.append(client)
        primary = OpenAiTts(client, options.agent.tts_model, options.agent.tts_voice, sample_rate)

        def report(exc: Exception) -> None:
            self.events.emit("error", stage="tts", cause=type(exc).__name__,
                             message=f"OpenAI TTS failed, using espeak-ng: {exc}")

        return FallbackTts(primary, espeak, report)

    def use_playout_rate(self, sample_rate: int) -> None:
        """Before the call opens: play the bot out at ``sample_rate`` (a transport that learns its client's rate
        from the client's first message then sends frames without a resampler in between)."""
        if sample_rate == self.playout.sample_rate:
            return
        self.playout.set_sample_rate(sample_rate)
        self.tts = self._make_tts(self.options, sample_rate)
        self.controller.tts = self.tts

    def component_failed(self, stage: str, exc: Exception) -> None:
        """Report a component that failed (an ``error`` event)."""
        self.events.emit("error", stage=stage, cause=type(exc).__name__, message=str(exc))

    def _stage_warning(self, stage: str, cause: str, message: str) -> None:
        """A stage failed or is overloaded (the reflex has emitted the ``error`` event)."""
        if cause == "overloaded":
            log.warning("call=%s %s overloaded: %s (fewer calls per process, or more ASR workers: "
                        "VOICEGATE_ASR_WORKERS)", self.call_id, stage, message)

    async def start_gate(self) -> None:
        """Load the call's detectors off the loop; a failure degrades the call to 'no barge-in', never kills it."""
        loop = asyncio.get_running_loop()
        try:
            judge, service, turns = await loop.run_in_executor(None, shared_models, self.options.turn)
            self.reflex.judge = judge
            await self.reflex.start(service, turns)
        except Exception as exc:
            log.error("call=%s gate disabled, barge-in off: %s", self.call_id, exc)
            self.events.emit("error", stage="gate", message=str(exc))
            return
        if self.driver is not None:
            self.driver.on_cpu = self.cpu_observer
            self.driver.on_lag = self.lag_observer

    async def open(self) -> None:
        """Load the gate and start the watchdog; the adapter then connects the caller."""
        await self.start_gate()
        self.tasks.spawn(self._watchdog(), "watchdog")

    def connected(self, **fields: Any) -> None:
        """The caller is connected: ``session.started``, then the agent speaks (once)."""
        if self._started or self.closed:
            return
        self._started = True
        self.events.emit("session.started", call_id=self.call_id, llm=self.options.agent.llm_configured,
                         **fields)
        self.agent.start()

    async def feed(self, pcm: np.ndarray, received_ms: float | None = None) -> None:
        """One chunk of the caller's audio (16 kHz mono s16) through the gate."""
        self.received_samples += len(pcm)
        x = pcm.astype(np.float64)
        self.inbound_sum_squares += float(np.dot(x, x))
        if self.driver is None:
            return
        try:
            await self.reflex.feed_user(pcm, PIPELINE_SAMPLE_RATE, received_ms)
        except Exception as exc:
            log.exception("call=%s gate failed on a chunk; barge-in off for this call", self.call_id)
            self.component_failed("gate", exc)
            self.reflex.detach_gate()

    @property
    def inbound_rms(self) -> float:
        """RMS of everything received (s16 units); 0 for silence."""
        n = self.received_samples
        return float(np.sqrt(self.inbound_sum_squares / n)) if n else 0.0

    async def _watchdog(self) -> None:
        """Close a call that never connected, whose client went silent (no audio for ``silent_timeout_secs``),
        or that ran too long."""
        server = self.options.server
        last_samples, last_change = -1, self.clock.now_ms()
        while True:
            await asyncio.sleep(min(1.0, server.silent_timeout_secs / 4))
            now = self.clock.now_ms()
            samples = self.received_samples
            if not self._started:
                if now > server.connect_timeout_secs * 1000:
                    await self.close(reason="connect_timeout")
                    return
                last_change = now
                continue
            if samples != last_samples:
                last_samples, last_change = samples, now
            if now - last_change > server.silent_timeout_secs * 1000:
                await self.close(reason="silent_client")
                return
            if now > server.max_call_secs * 1000:
                await self.close(reason="max_duration")
                return

    async def close_transport(self) -> None:
        """Release what the transport adapter owns (overridden by adapters)."""

    async def close(self, reason: str = "closed") -> None:
        """End the call: ``session.ended``, then the transport, tasks, agent and gate are released (idempotent)."""
        if self._closing is not None:
            await asyncio.shield(self._closing)
            return
        self.closed = True
        self._closing = asyncio.get_running_loop().create_future()
        try:
            self.events.emit("session.ended", call_id=self.call_id, reason=reason)
            log.info("call=%s closing: %s", self.call_id, reason)
            self.agent.cancel()
            self.playout.stop()
            await self.close_transport()
            await self.tasks.aclose()
            await self.agent.aclose()
            for client in self._clients:
                await client.close()  # type: ignore[attr-defined]
        except Exception:
            log.exception("call=%s error while closing", self.call_id)
        finally:
            # Also when the close itself was cancelled half-way (the client vanished mid-flush): no task of this
            # call may outlive it.
            self.tasks.cancel_all()
            self.reflex.detach_gate()
            if self._on_closed is not None:
                self._on_closed(self)
            self._closing.set_result(None)
            log.info("call=%s closed", self.call_id)
