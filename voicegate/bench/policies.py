"""The benchmark's policies: voicegate, the peers' own code, and emulations of the peers' defaults.

The peers' code (``pip install -e '.[peers]'``): ``pipecat-1.14`` and ``pipecat-1.14-minwords2``
(:mod:`voicegate.bench.peer_pipecat`), ``livekit-1.8`` (:mod:`voicegate.bench.peer_livekit`).

The emulations re-implement the peers' *defaults* on voicegate's own components (kept for a machine without the
extra, and labelled as emulations in the report):

- ``vad_only`` — Pipecat: stop once the VAD has seen ≥ 0.2 s of speech at confidence ≥ 0.7; no pause, no resume.
- ``min_duration`` — LiveKit Agents: pause after 0.5 s of speech; any transcript commits the stop; no transcript
  2.0 s after the pause → resume.
- ``min_words`` — word-count gates (vocode-style): stop once the transcript has ≥ 2 words; no pause.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from voicegate.asr.base import Transcript
from voicegate.asr.kws import KeywordHit
from voicegate.audio.vad import WINDOW_MS, VadWindow
from voicegate.config import GateOptions
from voicegate.gate.reflex import GateSink, ReflexGate, TranscriptRequest
from voicegate.gate.relevance import RelevanceJudge

POLICIES = ("voicegate", "vad_only", "min_duration", "min_words")
EMULATIONS = ("vad_only", "min_duration", "min_words")
PEERS = ("pipecat-1.14", "pipecat-1.14-minwords2", "livekit-1.8")
"""Policies that run the peers' own code (``pip install -e '.[peers]'``)."""
INTEGRATIONS = ("pipecat-1.14+voicegate", "livekit-1.8+voicegate")
"""The peers' pipelines with voicegate's integration in place (:mod:`voicegate.bench.peer_integrations`)."""
INTEGRATION_DEFAULTS = {"pipecat-1.14+voicegate": "pipecat-1.14", "livekit-1.8+voicegate": "livekit-1.8"}
"""Each integration's framework default, for the report's "what one line buys" table."""
ALIASES = {
    "pipecat": ("pipecat-1.14", "pipecat-1.14-minwords2", "pipecat-1.14+voicegate"),
    "livekit": ("livekit-1.8", "livekit-1.8+voicegate"),
    "peers": PEERS,
    "integrations": INTEGRATIONS,
    "emulations": EMULATIONS,
}
DEFAULT_POLICIES = ("voicegate", "pipecat", "livekit")
PEER_PACKAGES = {"pipecat-1.14": "pipecat-ai", "pipecat-1.14-minwords2": "pipecat-ai",
                 "livekit-1.8": "livekit-agents", "pipecat-1.14+voicegate": "pipecat-ai",
                 "livekit-1.8+voicegate": "livekit-agents"}


def resolve_policies(names: tuple[str, ...] | list[str]) -> tuple[tuple[str, ...], dict[str, str]]:
    """Expand aliases (``pipecat``, ``livekit``, ``peers``, ``emulations``) and drop peers that cannot be
    imported here; returns the policies to run and ``{policy: why it was skipped}``."""
    from voicegate.bench.peer_livekit import livekit_available
    from voicegate.bench.peer_pipecat import pipecat_available

    wanted: list[str] = []
    for name in names:
        for policy in ALIASES.get(name, (name,)):
            if policy not in (*POLICIES, *PEERS, *INTEGRATIONS):
                raise ValueError(f"unknown policy {policy!r}: choose from "
                                 f"{', '.join((*POLICIES, *PEERS, *INTEGRATIONS, *ALIASES))}")
            if policy not in wanted:
                wanted.append(policy)
    skipped: dict[str, str] = {}
    for policy in wanted:
        why = (pipecat_available() if policy.startswith("pipecat") else
               livekit_available() if policy.startswith("livekit") else None)
        if why is not None:
            skipped[policy] = why
    return tuple(p for p in wanted if p not in skipped), skipped


def package_versions() -> dict[str, str]:
    """The installed versions of the peers' packages (empty for those not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str] = {}
    for package in ("pipecat-ai", "livekit-agents", "livekit-plugins-silero"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            continue
    return out


class _Baseline:
    """Shared plumbing: the gate interface the drivers expect."""

    hangover_ms = 320.0

    def __init__(self, sink: GateSink) -> None:
        self.sink = sink
        self.request_transcript: TranscriptRequest = lambda *args: None
        self.verdicts: list[dict[str, Any]] = []
        self.input_lag_ms = 0.0
        self.echo_settling = False
        self._decided = False

    def _verdict(self, label: str, reason: str, t_ms: float) -> None:
        self._decided = True
        self.verdicts.append({"t_ms": t_ms, "label": label, "reasons": [reason]})
        self.sink.on_verdict(label, [reason])

    def on_keyword(self, hit: KeywordHit, t_ms: float) -> None:
        """Peers have no stop-phrase spotter."""

    def on_window(self, w: VadWindow, t_ms: float) -> None:
        raise NotImplementedError

    def on_transcript(self, segment_id: int, transcript: Transcript, t_ms: float, end_samples: int = -1) -> None:
        """Ignored unless the policy overrides it."""

    def on_transcript_failed(self, segment_id: int, end_samples: int, cause: str, t_ms: float) -> None:
        """Peers wait on their transcript; a lost one changes nothing."""


class VadOnlyGate(_Baseline):
    """Pipecat's defaults: ``start_secs=0.2``, ``confidence=0.7``, then cancel and flush."""

    def __init__(self, sink: GateSink) -> None:
        super().__init__(sink)
        self._run_ms = 0.0

    def on_window(self, w: VadWindow, t_ms: float) -> None:
        """Count consecutive confident windows while the bot talks."""
        self._run_ms = self._run_ms + WINDOW_MS if w.prob >= 0.7 else 0.0
        if self._run_ms >= 200.0 and self.sink.bot_active and not self._decided:
            self._verdict("interrupt", "vad_0.2s", t_ms)


class MinDurationGate(_Baseline):
    """LiveKit's defaults: ``min_interruption_duration=0.5``, ``false_interruption_timeout=2.0``."""

    def __init__(self, sink: GateSink) -> None:
        super().__init__(sink)
        self._speech_ms = 0.0
        self._paused_at: float | None = None
        self._segment = 0

    def on_window(self, w: VadWindow, t_ms: float) -> None:
        """Pause after 0.5 s of speech; resume 2 s later if no transcript has committed the stop."""
        if w.event == "start":
            self._segment += 1
        if w.voiced:
            self._speech_ms += WINDOW_MS
        if self._paused_at is None and self._speech_ms >= 500.0 and self.sink.bot_active and not self._decided:
            self._paused_at = t_ms
            self.sink.on_speech_started(t_ms)
            self.request_transcript(self._segment, max(0, w.end_samples - 16_000), w.end_samples, False)
        if w.event == "end" and self._paused_at is not None and not self._decided:
            self.request_transcript(self._segment, max(0, w.end_samples - 32_000), w.end_samples, True)
        if self._paused_at is not None and not self._decided and t_ms - self._paused_at >= 2000.0:
            self._verdict("noise", "no_transcript_2s", t_ms)

    def on_transcript(self, segment_id: int, transcript: Transcript, t_ms: float, end_samples: int = -1) -> None:
        """Any transcript commits the stop."""
        if self._paused_at is not None and not self._decided and transcript.text.strip():
            self._verdict("interrupt", "transcript", t_ms)


class MinWordsGate(_Baseline):
    """Stop once the transcript of the user's sound has at least two words; transcribed every 0.5 s."""

    def __init__(self, sink: GateSink) -> None:
        super().__init__(sink)
        self._start: int | None = None
        self._last_request_ms = 0.0
        self._segment = 0

    def on_window(self, w: VadWindow, t_ms: float) -> None:
        """Transcribe the running segment every 0.5 s and at its end."""
        if w.event == "start":
            self._segment += 1
            self._start = max(0, w.segment_start_samples - 3200)
            self._last_request_ms = t_ms
        if self._start is None or self._decided or not self.sink.bot_active:
            return
        if w.event == "end" or t_ms - self._last_request_ms >= 500.0:
            self._last_request_ms = t_ms
            self.request_transcript(self._segment, self._start, w.end_samples, w.event == "end")
        if w.event == "end":
            self._start = None

    def on_transcript(self, segment_id: int, transcript: Transcript, t_ms: float, end_samples: int = -1) -> None:
        """Two words or more: stop."""
        if not self._decided and len(transcript.text.split()) >= 2 and self.sink.bot_active:
            self._verdict("interrupt", "min_words_2", t_ms)


GateFactory = Callable[[GateOptions, GateSink, RelevanceJudge], Any]


def gate_factory(policy: str) -> GateFactory:
    """The gate class behind a policy name."""
    if policy == "voicegate":
        return lambda options, sink, judge: ReflexGate(options, sink, judge, lambda *args: None)
    if policy in ("pipecat-1.14", "pipecat-1.14-minwords2"):
        from voicegate.bench.peer_pipecat import PipecatGate

        min_words = 2 if policy.endswith("minwords2") else None
        return lambda options, sink, judge: PipecatGate(sink, min_words)
    classes = {"vad_only": VadOnlyGate, "min_duration": MinDurationGate, "min_words": MinWordsGate}
    if policy not in classes:
        raise ValueError(f"unknown policy {policy!r}: choose from {', '.join(POLICIES + PEERS)}")
    cls = classes[policy]
    return lambda options, sink, judge: cls(sink)
