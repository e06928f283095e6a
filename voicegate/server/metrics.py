"""Prometheus metrics (``GET /metrics``), fed from each call's events; one registry per application."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.process_collector import ProcessCollector

from voicegate.build import register_build_info

DETECTOR_LAG_BUCKETS = (0.001, 0.002, 0.003, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25)
LATENCY_BUCKETS = (0.02, 0.04, 0.064, 0.1, 0.15, 0.25, 0.4, 0.6, 0.8, 1.0, 1.5, 2.0, 3.0, 5.0)


class Metrics:
    """The ``voicegate_`` series."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # RSS, CPU seconds, open file descriptors
        r = self.registry
        self.active_sessions = Gauge("voicegate_active_sessions", "Live calls", registry=r)
        self.offers = Counter("voicegate_offers", "POST /offer by outcome", ["outcome"], registry=r)
        self.calls = Counter("voicegate_calls", "Calls started, by transport (webrtc, ws)", ["transport"], registry=r)
        self.active_calls = Gauge("voicegate_active_calls", "Live calls by transport", ["transport"], registry=r)
        self.ws_closed = Counter("voicegate_ws_closed", "WebSocket calls ended, by close code", ["code"],
                                 registry=r)
        self.time_to_pause = Histogram("voicegate_time_to_pause_seconds", "Speech onset to the bot's pause",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.verdict_latency = Histogram("voicegate_verdict_latency_seconds", "Speech onset to stop/resume verdict",
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.verdicts = Counter("voicegate_verdicts", "Gate verdicts", ["label"], registry=r)
        self.first_audio = Histogram("voicegate_reply_first_audio_seconds", "End of the user's turn to first bot audio",
                                     buckets=LATENCY_BUCKETS, registry=r)
        self.tts_latency = Histogram("voicegate_tts_seconds", "Synthesis time per sentence", buckets=LATENCY_BUCKETS,
                                     registry=r)
        self.errors = Counter("voicegate_errors", "Component failures by stage", ["stage"], registry=r)
        self.playout_late = Histogram("voicegate_playout_late_seconds",
                                      "How late each outbound 20 ms frame left against its media clock",
                                      buckets=(0.001, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32), registry=r)
        self.stage_cpu = Counter("voicegate_stage_cpu_seconds", "Compute per pipeline stage (vad, kws, echo, asr)",
                                 ["stage"], registry=r)
        self._stage_children: dict[str, Any] = {}
        self.asr_wait = Histogram("voicegate_asr_queue_seconds", "Time a transcript request waited for a worker",
                                  buckets=LATENCY_BUCKETS, registry=r)
        self.asr_decode = Histogram("voicegate_asr_decode_seconds", "Compute time of one transcript decode",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.detector_lag = Histogram(
            "voicegate_detector_lag_seconds",
            "A chunk that could start speech: its arrival to its VAD windows applied on the event loop",
            buckets=DETECTOR_LAG_BUCKETS, registry=r)
        register_build_info(r)
        self.threads = Gauge("voicegate_threads", "Python threads", registry=r)
        self.threads.set_function(threading.active_count)
        self.tasks = Gauge("voicegate_asyncio_tasks", "Pending asyncio tasks", registry=r)
        from voicegate.gate.detectors import detector_thread

        detectors = detector_thread()  # the process's shared Silero runs (windows / runs: the mean batch)
        Gauge("voicegate_vad_onnx_runs", "Silero ONNX runs in this process (all calls)",
              registry=r).set_function(lambda: detectors.runs)
        Gauge("voicegate_vad_windows", "Silero windows classified in this process (all calls)",
              registry=r).set_function(lambda: detectors.windows)

    def observe(self, event: dict[str, Any]) -> None:
        """Update the series from one call event."""
        kind = event["type"]
        if kind == "bot.paused" and "since_onset_ms" in event:
            self.time_to_pause.observe(event["since_onset_ms"] / 1000)
        elif kind == "gate.verdict":
            self.verdicts.labels(event["label"]).inc()
            if "ms_since_onset" in event:
                self.verdict_latency.observe(event["ms_since_onset"] / 1000)
        elif kind == "bot.speaking":
            if "since_user_turn_ms" in event:
                self.first_audio.observe(event["since_user_turn_ms"] / 1000)
            if "tts_ms" in event:
                self.tts_latency.observe(event["tts_ms"] / 1000)
        elif kind == "error":
            self.errors.labels(event.get("stage", "unknown")).inc()

    def observe_stage(self, stage: str, ms: float, wait_ms: float | None = None) -> None:
        """Account ``ms`` of compute to ``stage`` (and, for a decode, how long it waited in the queue)."""
        child = self._stage_children.get(stage)
        if child is None:  # ``labels()`` takes a lock and builds a key: it runs three times per 20 ms per call
            child = self._stage_children[stage] = self.stage_cpu.labels(stage)
        child.inc(ms / 1000)
        if stage == "asr":
            self.asr_decode.observe(ms / 1000)
            if wait_ms is not None:
                self.asr_wait.observe(wait_ms / 1000)

    def observe_detector_lag(self, ms: float) -> None:
        """One could-be-speech chunk's wait from its arrival to its VAD windows applied (the detector thread's share
        of a pause)."""
        self.detector_lag.observe(ms / 1000)

    def render(self) -> bytes:
        """The exposition text."""
        self.tasks.set(len([t for t in asyncio.all_tasks() if not t.done()]))
        return generate_latest(self.registry)
