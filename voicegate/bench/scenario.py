"""One barge-in scenario: the bot speaks, a clip is mixed into the microphone, the real pipeline decides.

Everything runs frame by frame at 20 ms, faster than real time, on a simulated clock; each decision is stamped at
the media time its audio was complete plus the compute time it really took.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from av import AudioFrame, AudioResampler

from voicegate.asr.base import Transcript, UtteranceAsr
from voicegate.bench.echo_path import Echo, EchoPath
from voicegate.config import PIPELINE_SAMPLE_RATE, AsrOptions, GateOptions, PlayoutOptions
from voicegate.gate.driver import OfflineGateDriver
from voicegate.gate.relevance import RelevanceJudge
from voicegate.tts.base import Speech

FRAME_MS = 20
NOMINAL_SPEECH_RMS = 3000.0
"""A caller's speech level at the microphone (≈ −21 dBFS), the reference for echo-only scenarios' gains."""
MIC_FRAME = PIPELINE_SAMPLE_RATE * FRAME_MS // 1000
MODELLED_CHUNK_MS = 1.0
"""The modelled clock's cost of the detectors per 20 ms chunk (measured: 0.5–1.5 ms on a 2-core AMD EPYC)."""
MODELLED_ASR_MS = (60.0, 40.0)
"""The modelled clock's cost of one decode: fixed ms + ms per second of audio (Whisper tiny.en, int8, one thread)."""


@dataclass
class ModelledCostAsr:
    """An engine whose transcripts carry a modelled compute time instead of the measured one: on the modelled
    clock a run is deterministic, so two CPUs that decide differently differ in their numerics, not their load."""

    inner: UtteranceAsr
    name: str = "modelled"

    def transcribe(self, pcm: np.ndarray) -> Transcript:
        """Transcribe with the inner engine; stamp the modelled cost."""
        fixed_ms, per_sec_ms = MODELLED_ASR_MS
        cost = fixed_ms + per_sec_ms * len(pcm) / PIPELINE_SAMPLE_RATE
        return replace(self.inner.transcribe(pcm), compute_ms=cost)


@dataclass
class Outcome:
    """What happened in one run (all times in media ms from the bot's start)."""

    onset_ms: float
    sound_end_ms: float = 0.0
    pause_ms: float | None = None
    """First silent frame caused by a pause (None: never paused)."""
    silence_ms: float | None = None
    """First silent frame after the onset caused by a pause or a stop."""
    stop_ms: float | None = None
    resume_ms: float | None = None
    verdict_ms: float | None = None
    remaining_at_stop_s: float = 0.0
    """What the bot still had to say when it was stopped."""
    bot_after_onset_s: float = 0.0
    """Bot audio sent after the onset."""
    verdicts: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    bot_out: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16))
    mic: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16))
    vad_trace: list[tuple[float, float, bool]] = field(default_factory=list)
    cpu_ms: dict[str, float] = field(default_factory=dict)
    user_turns: list[str] = field(default_factory=list)
    erle_trace: list[tuple[float, float]] = field(default_factory=list)
    """(media ms, the echo canceller's smoothed ERLE in dB) per chunk."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Policy-specific counts (an integration: the framework's own interruptions and LLM turns)."""

    @property
    def stopped(self) -> bool:
        """The bot was hard-stopped after the onset."""
        return self.stop_ms is not None


def speech_onset_ms(clip: np.ndarray) -> float | None:
    """Start of the first 32 ms window in which Silero hears speech in the clean clip (None: no speech).

    Silero runs over a second of silence first, as it does in a live stream: a fresh model state needs a few
    windows to warm up and would place the onset up to ~200 ms late (making every latency look shorter).
    """
    from voicegate.audio.vad import WINDOW_MS, WINDOW_SAMPLES, SileroVad

    vad = SileroVad()
    silence = np.zeros(WINDOW_SAMPLES, np.int16)
    for _ in range(32):
        vad(silence)
    for i in range(len(clip) // WINDOW_SAMPLES):
        if vad(clip[i * WINDOW_SAMPLES:(i + 1) * WINDOW_SAMPLES]) >= 0.5:
            return i * WINDOW_MS
    return None


def _loud_blocks(clip: np.ndarray, below_peak_db: float) -> np.ndarray:
    """Indices of the 10 ms blocks of ``clip`` (16 kHz) within ``below_peak_db`` of its loudest block."""
    block = PIPELINE_SAMPLE_RATE // 100
    x = clip.astype(np.float32) / 32768.0
    n = len(x) // block
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    rms = np.sqrt(np.mean(x[: n * block].reshape(n, block) ** 2, axis=1) + 1e-12)
    level = 20 * np.log10(rms / max(rms.max(), 1e-6))
    return np.flatnonzero(level > -below_peak_db)


def speech_offset_ms(clip: np.ndarray) -> float:
    """End of the last 10 ms block of the clean clip louder than 30 dB under its peak (where the sound ends)."""
    loud = _loud_blocks(clip, 30.0)
    return float((loud[-1] + 1) * 10) if loud.size else 0.0


def onset_ms(clip: np.ndarray) -> float:
    """Start of the first 10 ms block of ``clip`` louder than 30 dB under its peak (for non-speech sounds)."""
    loud = _loud_blocks(clip, 30.0)
    return float(loud[0] * 10) if loud.size else 0.0


def active_level(pcm: np.ndarray) -> float:
    """RMS over the 10 ms blocks within 30 dB of the loudest one (the level of the speech, not of its pauses)."""
    loud = _loud_blocks(pcm, 30.0)
    if not loud.size:
        return 0.0
    block = PIPELINE_SAMPLE_RATE // 100
    x = pcm.astype(np.float32)
    return float(np.sqrt(np.mean(np.concatenate([x[i * block:(i + 1) * block] for i in loud]) ** 2)))


class MicMix:
    """A scenario's microphone: the clip ``at_s`` in over the noise bed, plus the bot's own voice through the echo
    path as it is really played, one 20 ms frame at a time (shared by the simulated and the LiveKit runners)."""

    def __init__(self, bot: Speech, clip: np.ndarray, at_s: float, gain_db: float = 0.0,
                 echo: Echo | None = None, noise: np.ndarray | None = None, tail_s: float = 2.5) -> None:
        user = clip.astype(np.float32) * (10 ** (gain_db / 20))
        start = int(at_s * PIPELINE_SAMPLE_RATE)
        self.total = start + len(user) + int(tail_s * PIPELINE_SAMPLE_RATE)
        self.mic = np.zeros(self.total, dtype=np.float32)
        self.mic[start:start + len(user)] += user
        if noise is not None and len(noise):
            self.mic += np.tile(noise.astype(np.float32), int(np.ceil(self.total / len(noise))))[:self.total]
        speech_at = speech_onset_ms(clip) if clip.any() else None
        self.onset_ms = at_s * 1000 + (speech_at if speech_at is not None else onset_ms(clip))
        self.sound_end_ms = at_s * 1000 + (speech_offset_ms(clip) if clip.any() else 0.0)
        # Anything decided once the clip has begun is the clip's doing; with no clip (echo only) everything is.
        self.earliest_ms = at_s * 1000 if clip.any() else 0.0
        self.frames = self.total // MIC_FRAME
        self._bot_rate = bot.sample_rate
        self._resampler = AudioResampler(format="s16", layout="mono", rate=PIPELINE_SAMPLE_RATE)
        self._bot16 = np.zeros(self.total + PIPELINE_SAMPLE_RATE, dtype=np.float32)
        self._pos16 = 0
        self._path = None
        if echo is not None:
            # An echo's gain is relative to the user's speech (a typical level when the scenario has no user clip).
            user_level = active_level(user.astype(np.int16)) if clip.any() else 0.0
            self._path = EchoPath(echo, active_level(bot.pcm), user_level or NOMINAL_SPEECH_RMS)

    def next(self, k: int, played: np.ndarray) -> np.ndarray:
        """Microphone frame ``k`` (s16) given the bot's frame ``k`` as played (at the bot's rate)."""
        af = AudioFrame.from_ndarray(played.reshape(1, -1), format="s16", layout="mono")
        af.sample_rate = self._bot_rate
        for f in self._resampler.resample(af):
            part = f.to_ndarray().reshape(-1).astype(np.float32)
            self._bot16[self._pos16:self._pos16 + len(part)] = part[: len(self._bot16) - self._pos16]
            self._pos16 += len(part)
        chunk = slice(k * MIC_FRAME, (k + 1) * MIC_FRAME)
        if self._path is not None:
            self.mic[chunk] += self._path.process(self._bot16[chunk])
        pcm = np.clip(self.mic[chunk], -32768, 32767).astype(np.int16)
        self.mic[chunk] = pcm
        return pcm

    def outcome(self) -> Outcome:
        """An empty outcome with this scenario's onset and sound end."""
        return Outcome(onset_ms=self.onset_ms, sound_end_ms=self.sound_end_ms)


def run_scenario(bot: Speech, clip: np.ndarray, at_s: float, judge: RelevanceJudge, asr: UtteranceAsr,
                 options: GateOptions | None = None, gain_db: float = 0.0, echo: Echo | None = None,
                 noise: np.ndarray | None = None, tail_s: float = 2.5, policy: str = "voicegate",
                 asr_options: AsrOptions | None = None, modelled_clock: bool = False) -> Outcome:
    """Simulate the bot saying ``bot`` while ``clip`` (16 kHz) starts ``at_s`` seconds in, under ``policy``.

    The call is a :class:`~voicegate.reflex.Reflex` on the simulated clock (the library the server and the
    integrations use); another policy replaces only its gate. ``modelled_clock``: stamp decisions with modelled
    compute costs (:data:`MODELLED_CHUNK_MS`, :class:`ModelledCostAsr`) instead of the measured ones, so the run does
    not depend on this machine's load.
    """
    from voicegate.bench.policies import gate_factory
    from voicegate.reflex import Reflex

    options = options or GateOptions()
    reflex = Reflex.simulated(ModelledCostAsr(asr) if modelled_clock else asr, options, asr_options=asr_options,
                              judge=judge, call_id="bench",
                              playout=PlayoutOptions(), gate_factory=gate_factory(policy))
    playout, driver, gate = reflex.playout, reflex.driver, reflex.gate
    assert isinstance(driver, OfflineGateDriver) and gate is not None
    user_turns: list[str] = []
    if modelled_clock:
        driver.chunk_cost_ms = MODELLED_CHUNK_MS
    reflex.on_turn = user_turns.append
    reflex.feed_bot(bot.pcm, bot.sample_rate, bot.text)

    mix = MicMix(bot, clip, at_s, gain_db, echo, noise, tail_s)
    outcome = mix.outcome()
    earliest = mix.earliest_ms
    out_frames = []
    for k in range(mix.frames):
        reflex.advance(k * FRAME_MS)
        was_paused = playout.paused
        frame = reflex.next_bot_frame()
        out_frames.append(frame)
        pcm = mix.next(k, frame)
        queued = playout.queued_samples
        generation = playout.generation
        reflex.feed_user_simulated(pcm, PIPELINE_SAMPLE_RATE, (k + 1) * FRAME_MS)
        # A decision silences the first frame that starts after it.
        effective = float(np.ceil(driver.now_ms / FRAME_MS) * FRAME_MS)
        if playout.paused and not was_paused and outcome.pause_ms is None and driver.now_ms >= earliest:
            outcome.pause_ms = effective
        if playout.generation != generation and driver.now_ms >= earliest and outcome.stop_ms is None:
            outcome.stop_ms = driver.now_ms
            outcome.remaining_at_stop_s = queued / playout.sample_rate
        if outcome.silence_ms is None and driver.now_ms >= earliest and (
                (playout.paused and not was_paused) or playout.generation != generation):
            outcome.silence_ms = effective
    reflex.advance(float("inf"))
    close = getattr(gate, "close", None)
    if close is not None:
        close()
    events = reflex.events
    for event in events.history:
        if event["t_ms"] < earliest:
            continue
        if event["type"] == "bot.resumed" and outcome.resume_ms is None:
            outcome.resume_ms = event["t_ms"]
        if event["type"] == "gate.verdict" and outcome.verdict_ms is None:
            outcome.verdict_ms = event["t_ms"]
    bot_frames = np.concatenate(out_frames).reshape(-1, playout.frame_samples)
    first = int(np.ceil(outcome.onset_ms / FRAME_MS))
    outcome.bot_after_onset_s = float(np.count_nonzero(bot_frames[first:].any(axis=1)) * FRAME_MS / 1000)
    outcome.vad_trace = driver.trace
    outcome.verdicts = gate.verdicts
    outcome.events = events.history
    outcome.bot_out = np.concatenate(out_frames)
    outcome.mic = mix.mic.astype(np.int16)
    outcome.cpu_ms = driver.cpu_ms
    outcome.user_turns = user_turns
    outcome.erle_trace = driver.erle_trace
    return outcome
