"""Options records with their defaults, and the one place where environment variables are read."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

PIPELINE_SAMPLE_RATE = 16_000
"""Sample rate of everything the gate hears: inbound audio is resampled to 16 kHz mono s16."""

PLAYOUT_SAMPLE_RATE = 24_000
"""Sample rate of the outbound playout track (the rate of most TTS engines, OpenAI's pcm included)."""

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO_ROOT / "models"


@dataclass(frozen=True)
class ServerOptions:
    """HTTP and WebRTC settings of ``voicegate serve``."""

    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 64 * 1024
    """Largest accepted ``POST /offer`` body; a browser offer is 3–10 KB."""
    ice_servers: tuple[str, ...] = ()
    """STUN/TURN URLs for ``RTCConfiguration``; empty on loopback and LANs."""
    web_dir: Path = REPO_ROOT / "web"
    max_sessions: int = 4
    """Concurrent calls per worker process; more offers get 503 + Retry-After. ``voicegate load`` on a 2-core machine:
    one worker keeps 4 constantly interrupted calls real-time (0.4 % of frames > 20 ms late) and saturates at 8
    (README); ``serve`` runs one worker per core."""
    token: str | None = None
    """``VOICEGATE_TOKEN``: when set, ``POST /offer`` and ``GET /metrics`` need ``Authorization: Bearer <token>``."""
    cors_origins: tuple[str, ...] = ()
    """Browser origins allowed to call ``POST /offer`` from another origin (``*`` for any)."""
    offers_per_minute: int = 60
    """Per-client-address offer rate limit (0 = off); over it → 429 + Retry-After."""
    silent_timeout_secs: float = 20.0
    """A connected call that sends no audio for this long is closed."""
    max_call_secs: float = 3600.0
    """Calls are closed after this long."""
    inbound_jitter_frames: int = 0
    """Packets the inbound jitter buffer holds before passing one on: 0 hands each packet on as it arrives (a late
    one is dropped). aiortc's default of 4 adds 80 ms to every time-to-pause, and even 1 adds 20 ms (aiortc sees
    that a frame is complete only when the next one arrives); the audio is analysed, not played."""
    connect_timeout_secs: float = 15.0
    """A call whose ICE/DTLS has not connected this long after the answer is closed (the client vanished)."""
    handoff_socket: Path | None = None
    """``VOICEGATE_HANDOFF_SOCKET``, set by the ``--workers`` supervisor for its workers: the Unix socket on which a
    worker takes over ``/ws`` and ``/twilio`` client connections (:mod:`voicegate.server.handoff`)."""


@dataclass(frozen=True)
class PlayoutOptions:
    """Outbound track behaviour."""

    sample_rate: int = PLAYOUT_SAMPLE_RATE
    frame_ms: int = 20
    fade_ms: float = 4.0
    """Ramp applied when pausing and resuming so that nothing clicks."""
    resume_rewind_ms: float = 0.0
    """Replayed before the paused sample on resume (0 = continue from the exact sample)."""


@dataclass(frozen=True)
class GateOptions:
    """Thresholds of the reflex layer. Every default is documented in the README."""

    vad_onset_threshold: float = 0.5
    """Silero probability that starts speech."""
    vad_offset_threshold: float = 0.35
    """Silero probability under which speech may end (hysteresis)."""
    vad_onset_windows: int = 1
    """Consecutive 32 ms windows above the onset threshold needed to start speech."""
    vad_hangover_ms: float = 320.0
    """Non-speech needed to end speech."""
    noise_floor_margin_db: float = 8.0
    """A window must be this much louder than the tracked noise floor to count as speech."""
    min_speech_dbfs: float = -55.0
    """Absolute floor: quieter windows never count as speech."""
    verdict_timeout_ms: float = 1500.0
    """Unclear for this long while the user keeps talking → interrupt (long speech takes the floor)."""
    short_sound_ms: float = 120.0
    """Less voiced audio than this (a click, a knock) is noise → resume at once, without a transcript."""
    min_asr_confidence: float = 0.25
    """A transcript less certain than this, of less than ``uncertain_sound_ms`` of voice, is noise (a sneeze that
    Whisper hears as "Come!") unless it is a stop phrase. (Whisper's confidence: mean token probability × (1 −
    no-speech probability).)"""
    floor_asr_confidence: float = 0.2
    """Below this, a transcript is no evidence of an interruption whatever the sound's length, unless it is a stop
    phrase."""
    early_stop_confidence: float = 0.3
    """Before the sound has ended (a partial, or the transcript requested at the first silent window), a reading
    that is not a stop phrase stops the bot only with at least this confidence; otherwise the final decides."""
    uncertain_sound_ms: float = 500.0
    partial_interval_ms: float = 250.0
    """While a contested sound goes on, a partial transcript every this often (0 = no partials)."""
    first_partial_ms: float = 400.0
    """The first partial, this long after the onset."""
    partial_stop_confidence: float = 0.35
    """A stop phrase in a single partial stops the bot when the ASR is at least this confident; any other
    interruption needs a second reading that agrees."""
    max_syllables_base: float = 3.0
    max_syllables_per_sec: float = 8.0
    """A transcript with more syllables than ``base + per_sec × voiced seconds`` cannot have been said in that
    sound: it was invented for a cough or a sneeze, and cannot stop the bot."""
    fallback_interrupt_ms: float = 600.0
    """Without a transcript (ASR overloaded or failed), this much voiced sound is an interruption; less is noise."""
    end_of_turn_ms: float = 600.0
    """Silence that ends the user's turn after a stop."""
    stop_phrases: tuple[str, ...] = (
        "stop", "wait", "hold on", "hang on", "no", "cancel", "shut up", "be quiet", "pause", "enough",
    )
    echo_similarity: float = 0.6
    """Transcript/played-text word overlap above which speech is the bot's own echo."""
    echo_correlation: float = 0.5
    """Normalised cross-correlation with the recent outbound audio above which a window is echo."""
    echo_cancel: bool = False
    """Subtract the bot's own voice before VAD, keyword spotting and ASR (the echo guard keeps the raw signal).
    For callers whose audio carries the bot's echo (phone bridges, speakerphones, clients without their own echo
    cancellation); browsers cancel their own echo, and on clean audio the canceller costs a little (README)."""


@dataclass(frozen=True)
class AsrOptions:
    """The transcript stage: which engine, how each decode is shaped, and how decodes are scheduled."""

    engine: str = "auto"
    """``auto`` (Vosk when a model is configured or found, else Whisper), ``whisper`` (tiny.en, the utterance
    plus padding), ``whisper-padded`` (faster-whisper's 30 s decode, the old reference) or ``vosk``."""
    min_pad_secs: float = 1.0
    """Silence appended after the utterance before Whisper's encoder (instead of padding to 30 s)."""
    min_window_secs: float = 5.0
    """The encoder window is at least this long (utterance + padding): shorter windows make tiny.en repeat
    words ("stop, stop, stop") — see ``voicegate asr-bench``."""
    max_tokens_base: int = 10
    tokens_per_sec: float = 8.0
    """Decoded tokens are capped at ``max_tokens_base + tokens_per_sec × seconds of audio``."""
    no_repeat_ngram_size: int = 2
    repetition_penalty: float = 1.2
    threads: int = 1
    """Threads inside one decode; one is fastest for these short inputs (measured, README)."""
    workers: int = 2
    """Decodes run at once across calls (one thread each)."""
    max_wait_ms: float = 700.0
    """A request that has waited this long in the queue is dropped and the call told ``overloaded``."""


@dataclass(frozen=True)
class TurnOptions:
    """The turn transcriber: what the agent receives and the history records.

    The reflex keeps its own small, fast engine (:class:`AsrOptions`) for partials and verdicts; the user's whole
    turn is transcribed once more, by a stronger engine, on the turn's audio (every segment of the turn, one
    decode), starting as soon as the end-of-turn silence begins.
    """

    engine: str = "whisper-base"
    """``whisper-base`` (Whisper base from the package registry, the default), ``openai`` (``audio.transcriptions``
    on ``base_url``, Whisper base as the fallback), ``reflex`` (no second transcriber: the reflex's own final
    transcript, as before), or the path of any CTranslate2 Whisper directory."""
    language: str = "en"
    """Language token for a multilingual model (``en``; empty lets Whisper detect it)."""
    beam_size: int = 1
    threads: int = 1
    """Threads inside one turn decode. One is faster as well as cheaper here (2 cores, a 2 s turn in a 10 s window:
    121–128 ms and as much CPU on one thread; 132 ms wall and 170 ms CPU on two), and gives the same transcripts
    (the 200 spoken orders: 0 differ)."""
    workers: int = 1
    """Turn decodes that may run at once in a process."""
    nice: int = 5
    """Niceness of the turn decode threads: under load the reflex's threads win the CPU."""
    speculate_after_ms: float = 160.0
    """Silence after which the turn's transcript is started (re-started if the user goes on)."""
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 3
    """A whole-turn decode needs no strong repetition control: a penalty of 1.2 drops repeated words ("a little
    bit of" → "little bit of"); ``voicegate asr-bench --turns``."""
    max_tokens_base: int = 20
    tokens_per_sec: float = 10.0
    min_window_secs: float = 10.0
    """The encoder sees at least this much (the turn plus silence): in a 2 s window Whisper base writes a lone
    "stop" as "Stop Stop Stop"; from 10 s on it writes "Stop." (``voicegate asr-bench --turns``)."""
    model: str = "whisper-1"
    """``openai`` engine: the transcription model (a hosted one, or what a local faster-whisper server serves)."""
    base_url: str | None = None
    """``openai`` engine: the endpoint (default ``OPENAI_BASE_URL``, else OpenAI's)."""
    api_key: str | None = None
    """``openai`` engine: the key (default ``OPENAI_API_KEY``)."""
    timeout_secs: float = 3.0
    """``openai`` engine: a request slower than this fails over to the local engine."""


@dataclass(frozen=True)
class AgentOptions:
    """The brain: an OpenAI-compatible LLM, or the built-in demo assistant when none is configured."""

    api_key: str | None = None
    base_url: str | None = None
    model: str = "gpt-4o-mini"
    system_prompt: str = (
        "You are a helpful voice assistant. Answer in one to three short spoken sentences, no markdown."
    )
    greeting: str = "Hi! How can I help?"
    first_token_timeout_secs: float = 8.0
    tts: str = "espeak"
    """``espeak`` (the espeak-ng command line, default: fastest to the first audio), ``pyttsx3`` (espeak-ng in-process
    through pyttsx3, with espeak's own word timings; the command line as fallback) or ``openai`` (``audio.speech``
    on the same endpoint, espeak-ng as fallback)."""
    tts_model: str = "gpt-4o-mini-tts"
    tts_voice: str = "alloy"

    @property
    def llm_configured(self) -> bool:
        """True when an OpenAI-compatible endpoint or key is configured."""
        return bool(self.base_url or self.api_key)


@dataclass(frozen=True)
class Options:
    """Everything that can be configured, in one record."""

    server: ServerOptions = field(default_factory=ServerOptions)
    playout: PlayoutOptions = field(default_factory=PlayoutOptions)
    gate: GateOptions = field(default_factory=GateOptions)
    agent: AgentOptions = field(default_factory=AgentOptions)
    asr: AsrOptions = field(default_factory=AsrOptions)
    turn: TurnOptions = field(default_factory=TurnOptions)
    vosk_model: Path | None = None


def _coerce(value: str, current: Any) -> Any:
    if isinstance(current, bool):
        return value.strip().lower() in ("1", "true", "yes", "on")
    if isinstance(current, int):
        return int(value)
    if isinstance(current, float):
        return float(value)
    if isinstance(current, tuple):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if isinstance(current, Path):
        return Path(value)
    return value


def _overlay(record: Any, prefix: str, env: dict[str, str]) -> Any:
    changes = {}
    for f in fields(record):
        key = f"{prefix}{f.name.upper()}"
        if key in env:
            changes[f.name] = _coerce(env[key], getattr(record, f.name))
    return replace(record, **changes) if changes else record


ORT_GRAPH_OPT_ENV = "VOICEGATE_ORT_GRAPH_OPT"
HANDOFF_SOCKET_ENV = "VOICEGATE_HANDOFF_SOCKET"


def ort_graph_optimization(env: dict[str, str] | None = None) -> str:
    """``VOICEGATE_ORT_GRAPH_OPT``: onnxruntime's graph optimisation level for Silero VAD — ``all`` (default),
    ``extended``, ``basic`` or ``disable``. The unoptimised graph sums in another order (its probabilities differ in
    the last bits): the second numerics profile of ``make test-portable``, as onnxruntime has no switch for the
    instruction set it picks."""
    value = (os.environ if env is None else env).get(ORT_GRAPH_OPT_ENV, "all").strip().lower() or "all"
    if value not in ("all", "extended", "basic", "disable"):
        raise ValueError(f"{ORT_GRAPH_OPT_ENV}={value!r}: choose all, extended, basic or disable")
    return value


def options_from_env(env: dict[str, str] | None = None) -> Options:
    """Build :class:`Options` from environment variables.

    ``VOICEGATE_GATE_<FIELD>`` overrides any :class:`GateOptions` field (e.g. ``VOICEGATE_GATE_VAD_HANGOVER_MS``),
    likewise ``VOICEGATE_PLAYOUT_<FIELD>``, ``VOICEGATE_SERVER_<FIELD>`` and ``VOICEGATE_ASR_<FIELD>``. The LLM uses
    the standard ``OPENAI_API_KEY`` / ``OPENAI_BASE_URL`` plus ``VOICEGATE_LLM_MODEL``, ``VOICEGATE_SYSTEM_PROMPT`` and
    ``VOICEGATE_GREETING``, ``VOICEGATE_LLM_TIMEOUT_SECS`` and ``VOICEGATE_TTS`` (``espeak``/``pyttsx3``/``openai``,
    with ``VOICEGATE_TTS_MODEL``/``VOICEGATE_TTS_VOICE``); ``VOICEGATE_VOSK_MODEL`` names a Vosk model directory;
    ``VOICEGATE_ICE_SERVERS`` is a comma-separated list of STUN/TURN URLs; ``VOICEGATE_MAX_SESSIONS``,
    ``VOICEGATE_TOKEN``, ``VOICEGATE_CORS_ORIGINS`` and ``VOICEGATE_OFFERS_PER_MINUTE`` set the server's limits;
    ``VOICEGATE_HANDOFF_SOCKET`` is set by the ``--workers`` supervisor for its workers.
    ``VOICEGATE_TURN_<FIELD>`` sets the turn transcriber (:class:`TurnOptions`; ``VOICEGATE_TURN_ENGINE``,
    ``VOICEGATE_TURN_MODEL``, …); its endpoint and key default to ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY``.
    """
    env = dict(os.environ if env is None else env)
    opts = Options()
    server = _overlay(opts.server, "VOICEGATE_SERVER_", env)
    if "VOICEGATE_ICE_SERVERS" in env:
        server = replace(server, ice_servers=_coerce(env["VOICEGATE_ICE_SERVERS"], ()))
    for key, name in (("VOICEGATE_MAX_SESSIONS", "max_sessions"), ("VOICEGATE_CORS_ORIGINS", "cors_origins"),
                      ("VOICEGATE_OFFERS_PER_MINUTE", "offers_per_minute")):
        if key in env:
            server = replace(server, **{name: _coerce(env[key], getattr(server, name))})
    if env.get("VOICEGATE_TOKEN"):
        server = replace(server, token=env["VOICEGATE_TOKEN"])
    if env.get(HANDOFF_SOCKET_ENV):
        server = replace(server, handoff_socket=Path(env[HANDOFF_SOCKET_ENV]))
    agent = AgentOptions(
        api_key=env.get("OPENAI_API_KEY") or None,
        base_url=env.get("OPENAI_BASE_URL") or None,
        model=env.get("VOICEGATE_LLM_MODEL", AgentOptions.model),
        system_prompt=env.get("VOICEGATE_SYSTEM_PROMPT", AgentOptions.system_prompt),
        greeting=env.get("VOICEGATE_GREETING", AgentOptions.greeting),
        first_token_timeout_secs=float(env.get("VOICEGATE_LLM_TIMEOUT_SECS",
                                               AgentOptions.first_token_timeout_secs)),
        tts=env.get("VOICEGATE_TTS", AgentOptions.tts),
        tts_model=env.get("VOICEGATE_TTS_MODEL", AgentOptions.tts_model),
        tts_voice=env.get("VOICEGATE_TTS_VOICE", AgentOptions.tts_voice),
    )
    vosk = env.get("VOICEGATE_VOSK_MODEL")
    turn = _overlay(opts.turn, "VOICEGATE_TURN_", env)
    turn = replace(turn, base_url=turn.base_url or agent.base_url, api_key=turn.api_key or agent.api_key)
    return Options(
        server=server,
        playout=_overlay(opts.playout, "VOICEGATE_PLAYOUT_", env),
        gate=_overlay(opts.gate, "VOICEGATE_GATE_", env),
        agent=agent,
        asr=_overlay(opts.asr, "VOICEGATE_ASR_", env),
        turn=turn,
        vosk_model=Path(vosk) if vosk else None,
    )
