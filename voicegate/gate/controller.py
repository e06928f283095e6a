"""The duplex controller: the single owner of the conversation state and the only code touching the playout track."""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncIterable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from voicegate.events import EventBus
from voicegate.gate.relevance import content_words, normalize
from voicegate.media.playout import PlayoutTrack, UtteranceReport
from voicegate.tts.base import Speech, Tts

log = logging.getLogger(__name__)


class DuplexState(enum.Enum):
    """Who holds the floor."""

    LISTENING = "listening"
    """Bot silent, nobody speaking."""
    BOT_SPEAKING = "bot_speaking"
    PAUSED = "paused"
    """User sound while the bot spoke: bot paused, verdict pending."""
    USER_TURN = "user_turn"
    """User speaking with the floor (after a stop, or while the bot was silent)."""


@dataclass
class HeardText:
    """What the caller heard of one reply, assembled from playout reports."""

    reply_id: str
    parts: list[str]
    interrupted: bool = False

    @property
    def text(self) -> str:
        """The heard text, joined."""
        return " ".join(p for p in self.parts if p).strip()


Verdict = str  # "interrupt" | "backchannel" | "noise" | "echo"


class DuplexController:
    """Explicit, idempotent state machine between detectors, the agent and the playout track.

    Detectors call :meth:`on_speech_started`, :meth:`on_verdict` and :meth:`on_speech_ended`; the agent calls
    :meth:`speak` from its own task. ``on_stop`` is called (once per stop) so the owner can cancel the reply task;
    ``on_reply_heard`` receives what the caller actually heard of each reply.
    """

    def __init__(self, playout: PlayoutTrack, tts: Tts, events: EventBus, lookahead_ms: float = 1500.0) -> None:
        self.playout = playout
        self.tts = tts
        self.events = events
        self.lookahead_ms = lookahead_ms
        self.state = DuplexState.LISTENING
        self.on_stop: Callable[[], None] | None = None
        self.on_reply_heard: Callable[[HeardText], None] | None = None
        self.on_user_turn: Callable[[str], None] | None = None
        self.echo_similarity = 0.6
        self._recent_bot_text: deque[tuple[float, str]] = deque(maxlen=16)
        self._requested: dict[str, float] = {}
        self._tts_ms: dict[str, float] = {}
        self._speech: dict[str, tuple[str, Speech]] = {}
        self._heard: dict[str, HeardText] = {}
        self._ids = itertools.count(1)
        self._space = asyncio.Event()
        playout.listener = self

    # -- the agent's side -------------------------------------------------------------------------------------

    async def speak(self, sentences: Iterable[str] | AsyncIterable[str], reply_id: str,
                    requested_ms: float | None = None) -> bool:
        """Synthesize and queue ``sentences`` one by one, keeping at most ``lookahead_ms`` queued.

        Returns False as soon as a stop (a :meth:`PlayoutTrack.clear`) makes this reply stale. A sentence the TTS
        cannot synthesize is reported as an ``error`` event and skipped; the reply goes on.
        """
        generation = self.playout.generation
        self._heard[reply_id] = HeardText(reply_id, [])
        if requested_ms is not None:
            self._requested[reply_id] = requested_ms
        if isinstance(sentences, AsyncIterable):
            async for sentence in sentences:
                if not await self._speak_one(sentence, reply_id, generation):
                    return False
        else:
            for sentence in sentences:
                if not await self._speak_one(sentence, reply_id, generation):
                    return False
        while self.playout.queued_samples and self.playout.generation == generation:
            await self._wait_space()
        done = self.playout.generation == generation
        if done:
            self._finish_reply(reply_id)
        return done

    async def _speak_one(self, sentence: str, reply_id: str, generation: int) -> bool:
        if not sentence.strip():
            return self.playout.generation == generation
        t0 = time.perf_counter()
        try:
            speech = await self.tts.synthesize(sentence)
            self._tts_ms[sentence] = (time.perf_counter() - t0) * 1000
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("call=%s TTS failed: %s", self.events.call_id, exc)
            self.events.emit("error", stage="tts", cause=type(exc).__name__, message=str(exc))
            return self.playout.generation == generation
        while (self.playout.generation == generation
               and self.playout.queued_samples * 1000 / self.playout.sample_rate > self.lookahead_ms):
            await self._wait_space()
        return self.queue_speech(speech, reply_id, generation)

    def queue_speech(self, speech: Speech, reply_id: str, generation: int | None = None) -> bool:
        """Queue synthesized ``speech`` now (False when ``generation`` is stale)."""
        utterance_id = f"{reply_id}.{next(self._ids)}"
        speech = _resampled(speech, self.playout.sample_rate)
        if not self.playout.push(speech.pcm, utterance_id, generation):
            return False
        self._heard.setdefault(reply_id, HeardText(reply_id, []))
        self._speech[utterance_id] = (reply_id, speech)
        if self.state is DuplexState.LISTENING:
            self._set_state(DuplexState.BOT_SPEAKING)
        return True

    async def _wait_space(self) -> None:
        self._space.clear()
        try:
            await asyncio.wait_for(self._space.wait(), timeout=0.1)
        except TimeoutError:
            pass

    def _finish_reply(self, reply_id: str) -> None:
        heard = self._heard.pop(reply_id, None)
        if heard is not None and self.on_reply_heard is not None:
            self.on_reply_heard(heard)

    # -- detectors' side --------------------------------------------------------------------------------------

    def on_speech_started(self, t_ms: float | None = None, **fields: Any) -> None:
        """VAD onset: pause the bot at once if it is speaking. No ASR, classifier or LLM on this path."""
        self.events.emit("user.speech_started", t_ms, **fields)
        if self.state is DuplexState.BOT_SPEAKING:
            self.playout.pause()
            self._set_state(DuplexState.PAUSED)
            extra = {"since_onset_ms": fields["since_onset_ms"]} if "since_onset_ms" in fields else {}
            self.events.emit("bot.paused", reason="user_speech", **extra)
        elif self.state is DuplexState.LISTENING:
            self._set_state(DuplexState.USER_TURN)

    def on_speech_ended(self, t_ms: float | None = None, **fields: Any) -> None:
        """VAD offset."""
        self.events.emit("user.speech_ended", t_ms, **fields)

    def on_verdict(self, label: Verdict, reasons: list[str], **fields: Any) -> None:
        """Apply the gate's verdict: ``interrupt`` stops the bot, anything else resumes it."""
        self.events.emit("gate.verdict", label=label, reasons=reasons, state=self.state.value, **fields)
        if label == "interrupt":
            self.stop(reason=",".join(reasons) or "interrupt")
        elif self.state is DuplexState.PAUSED:
            self.resume()
        elif self.state is DuplexState.USER_TURN and not self.playout.queued_samples:
            self._set_state(DuplexState.LISTENING)

    def resume(self) -> bool:
        """Continue the paused reply from the exact sample."""
        if self.state is not DuplexState.PAUSED:
            return False
        self.playout.resume()
        self._set_state(DuplexState.BOT_SPEAKING if self.playout.queued_samples else DuplexState.LISTENING)
        self.events.emit("bot.resumed")
        return True

    def stop(self, reason: str = "interrupt") -> bool:
        """Hard stop: clear every queued sample, bump the generation, cancel the reply, give the user the floor."""
        if self.state is DuplexState.USER_TURN:
            return False
        was_speaking = self.state in (DuplexState.BOT_SPEAKING, DuplexState.PAUSED)
        self.playout.clear()
        self._set_state(DuplexState.USER_TURN)
        if was_speaking:
            self.events.emit("bot.stopped", reason=reason)
        for reply_id in list(self._heard):
            self._heard[reply_id].interrupted = True
            self._finish_reply(reply_id)
        self._space.set()
        if self.on_stop is not None:
            self.on_stop()
        return True

    def end_user_turn(self) -> None:
        """The user's turn is over (VAD silence + final transcript): the floor is free again."""
        if self.state is DuplexState.USER_TURN:
            self._set_state(DuplexState.LISTENING)

    @property
    def bot_active(self) -> bool:
        """True while the bot speaks or is paused pending a verdict."""
        return self.state in (DuplexState.BOT_SPEAKING, DuplexState.PAUSED)

    def on_transcript(self, text: str, final: bool) -> None:
        """A transcript of the user's sound (partial while they speak, final at its end)."""
        self.events.emit("asr.final" if final else "asr.partial", text=text)

    def on_user_turn_ended(self, text: str, **fields: Any) -> None:
        """The gate finished the user's turn: free the floor, say so (``user.turn``: the text the agent gets and
        the engine that wrote it), and hand the text to the agent."""
        self.end_user_turn()
        self.events.emit("user.turn", text=text, **fields)
        if self.on_user_turn is not None:
            self.on_user_turn(text)

    def is_echo_text(self, text: str) -> bool:
        """True when ``text`` is the bot's own words of the last few seconds coming back: at least two words
        that the bot said in this order ("let me" from "Let me tell you …"), or mostly its content words."""
        now = self.events.clock.now_ms()
        said = [t for at, t in self._recent_bot_text if now - at < 8000]
        heard = normalize(text).split()
        if len(heard) >= 2 and any(f" {' '.join(heard)} " in f" {normalize(t)} " for t in said):
            return True
        words = content_words(text)
        if len(words) < 2:
            return False
        recent = {w for t in said for w in content_words(t)}
        return sum(w in recent for w in words) / len(words) >= self.echo_similarity

    def remember_bot_text(self, text: str) -> None:
        """The bot is saying ``text`` now (a transcript that repeats it soon after is the bot's echo)."""
        self._recent_bot_text.append((self.events.clock.now_ms(), text))

    def utterance_text(self, utterance_id: str) -> str:
        """The words of a queued utterance ("" when unknown or audio only)."""
        entry = self._speech.get(utterance_id)
        return entry[1].text if entry else ""

    # -- playout listener -------------------------------------------------------------------------------------

    def on_utterance_started(self, utterance_id: str, at_samples: int) -> None:
        """Playout began an utterance (called from the track's ``recv``)."""
        entry = self._speech.get(utterance_id)
        text = entry[1].text if entry else ""
        now = self.events.clock.now_ms()
        self.remember_bot_text(text)
        fields: dict[str, Any] = {}
        requested = self._requested.pop(entry[0], None) if entry else None
        if requested is not None:
            fields["since_user_turn_ms"] = round(now - requested, 1)
        tts_ms = self._tts_ms.pop(text, None)
        if tts_ms is not None:
            fields["tts_ms"] = round(tts_ms, 1)
        self.events.emit("bot.speaking", utterance_id=utterance_id, text=text, **fields)

    def on_utterance_finished(self, report: UtteranceReport, at_samples: int) -> None:
        """Playout finished or dropped an utterance: record what was heard."""
        entry = self._speech.pop(utterance_id := report.utterance_id, None)
        self._space.set()
        if entry is None:
            return
        reply_id, speech = entry
        heard = self._heard.get(reply_id)
        if heard is not None:
            heard.parts.append(speech.text_heard(report.played_samples))
        log.debug("utterance %s played %d/%d", utterance_id, report.played_samples, report.total_samples)
        if not self.playout.queued_samples and self.state is DuplexState.BOT_SPEAKING:
            self._set_state(DuplexState.LISTENING)
            self.events.emit("bot.done", utterance_id=utterance_id)

    def _set_state(self, state: DuplexState) -> None:
        if state is not self.state:
            log.debug("call=%s state %s → %s", self.events.call_id, self.state.value, state.value)
            self.state = state


def _resampled(speech: Speech, sample_rate: int) -> Speech:
    if speech.sample_rate == sample_rate:
        return speech
    from voicegate.audio.pcm import resample

    ratio = sample_rate / speech.sample_rate
    return Speech(speech.text, resample(speech.pcm, speech.sample_rate, sample_rate), sample_rate,
                  [(c, int(s * ratio)) for c, s in speech.word_ends])
