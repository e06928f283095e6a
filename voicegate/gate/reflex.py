"""The reflex gate: decision logic on media time. Models run in a driver; this class only decides.

Policy (every threshold is in :class:`~voicegate.config.GateOptions`):

1. VAD onset while the bot speaks → the controller pauses the bot at once (no ASR, classifier or LLM).
2. While paused, the first of these decides:
   - a stop phrase from the keyword spotter → ``interrupt``, unless the transcripts of the same sound say it is
     something else (a backchannel, a filler, a non-speech sound): the spotter hears "stop" in some "uh-huh"s.
     A hit before any transcript of the sound asks for one at once and waits up to ``KWS_CONFIRM_MS`` for it;
   - a *trusted* partial transcript (streamed every ``partial_interval_ms`` while the sound goes on) that the
     relevance judge labels ``interrupt``: a stop phrase heard with enough confidence, or a reading the next
     partial confirms (see :meth:`ReflexGate._trust_early`). A partial never resumes the bot;
   - the final transcript (requested at the first silent window, so it is ready when the sound ends): an
     interrupt → ``interrupt``; one that matches what the bot just said → ``echo``; a backchannel / nothing /
     a sound the ASR annotated as non-speech (``(coughing)``) / more syllables than the voiced audio could hold
     → ``backchannel`` / ``noise``;
   - the sound ends after less than ``short_sound_ms`` of voiced audio → ``noise``;
   - the user is still talking after ``verdict_timeout_ms`` → ``interrupt`` (long speech takes the floor), unless
     the latest partial says the sound is not speech (a long laugh keeps the bot paused until it ends);
   - no transcript can be had (ASR overloaded or failed) → decided on VAD alone: at least
     ``fallback_interrupt_ms`` of voiced sound → ``interrupt``, less → ``noise``.
3. ``interrupt`` stops the bot and gives the user the turn; anything else resumes from the paused sample.
4. The user's turn ends after ``end_of_turn_ms`` of silence; its final transcript goes to the agent. With a turn
   transcriber (:attr:`ReflexGate.turns`), the turn's whole audio is transcribed again by a stronger engine, started
   when its silence begins, and that transcript goes to the agent instead (the reflex's ``asr.final`` is unchanged).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

from voicegate.asr.base import Transcript, syllables
from voicegate.asr.kws import KeywordHit
from voicegate.audio.vad import WINDOW_SAMPLES, VadWindow
from voicegate.config import PIPELINE_SAMPLE_RATE, GateOptions
from voicegate.gate.relevance import STOP_PHRASES, LexiconJudge, Relevance, RelevanceJudge, content_words, normalize

log = logging.getLogger(__name__)

PAUSED_HANGOVER_MS = 200.0
KWS_GRACE_MS = 400.0
KWS_CONFIRM_MS = 400.0
"""A spotter hit waits this long at most for a transcript of its sound to confirm it (the ASR is overloaded or
failed otherwise): then the stop phrase stops the bot."""
SPECULATE_AFTER_WINDOWS = 1
"""Silent windows (32 ms each) after which the transcript that will probably be final is requested early."""
NO_TRANSCRIPT_MS = 2500.0
EPISODE_JOIN_MS = 1000.0
"""A contested sound starting this soon after the previous one is transcribed together with it ("wait … a second")."""


class GateSink(Protocol):
    """What the gate drives: the duplex controller."""

    @property
    def bot_active(self) -> bool:
        """True while the bot speaks or is paused pending a verdict."""
        ...

    def on_speech_started(self, t_ms: float | None = None, **fields: object) -> None: ...

    def on_speech_ended(self, t_ms: float | None = None, **fields: object) -> None: ...

    def on_verdict(self, label: str, reasons: list[str], **fields: object) -> None: ...

    def on_user_turn_ended(self, text: str, **fields: object) -> None: ...

    def on_transcript(self, text: str, final: bool) -> None: ...

    def is_echo_text(self, text: str) -> bool: ...


class TurnTaker(Protocol):
    """Transcribes the user's whole turn with a stronger engine (:class:`voicegate.asr.turns.CallTurns`)."""

    speculate_after_windows: int
    """Silent 32 ms windows after the last voiced one at which the turn's decode starts."""

    def speculate(self, start_samples: int, end_samples: int) -> None:
        """Silence began: start decoding the turn so far."""
        ...

    def finish(self, start_samples: int, end_samples: int,
               deliver: Callable[[str, dict[str, object]], None]) -> None:
        """The turn is confirmed: call ``deliver(text, fields)`` with its transcript."""
        ...


TranscriptRequest = Callable[[int, int, int, bool], None]
"""``request(segment_id, start_samples, end_samples, final)``: the driver transcribes and calls back
``on_transcript(segment_id, transcript, t_ms, end_samples)``."""


class Gate(Protocol):
    """What a driver feeds: the reflex gate, or a peer-policy emulation in the benchmark."""

    request_transcript: TranscriptRequest
    verdicts: list[dict[str, object]]
    input_lag_ms: float
    echo_settling: bool

    @property
    def hangover_ms(self) -> float: ...

    def on_window(self, w: VadWindow, t_ms: float) -> None: ...

    def on_keyword(self, hit: KeywordHit, t_ms: float) -> None: ...

    def on_transcript(self, segment_id: int, transcript: Transcript, t_ms: float, end_samples: int = -1) -> None: ...

    def on_transcript_failed(self, segment_id: int, end_samples: int, cause: str, t_ms: float) -> None: ...


@dataclass
class _Segment:
    segment_id: int
    start_samples: int
    onset_ms: float
    contested: bool
    """Started while the bot was speaking: a verdict is owed."""
    voiced_ms: float = 0.0
    ended_ms: float | None = None
    end_samples: int | None = None
    last_partial_ms: float | None = None
    reading: str | None = None
    """The label of the latest partial reading (``interrupt`` / ``backchannel`` / ``ignore`` / ``sound``)."""
    reading_words: frozenset[str] = frozenset()
    reading_confidence: float = 0.0
    settling: bool = False
    """Began while the echo canceller was still learning the echo path."""
    short_end: bool = False
    """The sound ended on the short hangover used while a verdict is owed."""
    partials_off: bool = False
    """A partial could not be decoded in time: no more partials for this sound (shed load)."""
    asr_failed: str | None = None
    """Why the final transcript cannot come (``overloaded``, ``error``): decide on VAD alone."""
    speculative_end: int | None = None
    """End of the transcript requested at the first silent window (used as the final if nothing follows)."""
    speculative: Transcript | None = None
    silent_windows: int = 0
    prob_sum: float = 0.0
    windows: int = 0
    decided: bool = False
    texts: list[str] = field(default_factory=list)
    keyword: str | None = None
    """The stop phrase the spotter heard in this sound, if any."""
    voice_end: int = 0
    """End of the last voiced window (stream samples)."""
    turn_handed: bool = False
    """The turn transcriber has this segment's turn: the reflex's final no longer ends the turn."""
    keyword_ms: float | None = None
    """When a spotter hit began waiting for a transcript of its sound to confirm it (None: none waits)."""


class ReflexGate:
    """Fuses VAD, keyword hits and transcripts into verdicts; one per call, driven on the event loop."""

    def __init__(self, options: GateOptions, sink: GateSink, judge: RelevanceJudge,
                 request_transcript: TranscriptRequest) -> None:
        self.options = options
        self.sink = sink
        self.judge = judge
        self.request_transcript = request_transcript
        self.segment: _Segment | None = None
        self._last_contested: tuple[int, float] | None = None
        self._stop_lexicon = frozenset(normalize(p) for p in (*STOP_PHRASES, *options.stop_phrases))
        self._pending_turn: tuple[int, float, str, int, str | None] | None = None
        """(start sample, end ms, text, turn end sample, stop phrase) of an interrupting turn that may still go
        on."""
        self.turns: TurnTaker | None = None
        """A stronger transcriber for the user's turns; ``None``: the reflex's final transcript is the turn."""
        self._ids = itertools.count(1)
        self.verdicts: list[dict[str, object]] = []
        self.input_lag_ms = 0.0
        self.echo_settling = False
        """Set by the driver: the bot is audible and the echo canceller has not yet learned the echo path, so a
        sound now may be the bot's own voice that nothing has removed yet."""
        """Set by the driver: how long the current chunk waited (network jitter buffer aside) before its verdict."""

    @property
    def hangover_ms(self) -> float:
        """Silence that ends the current segment: short while a verdict is owed, long in the user's turn."""
        seg = self.segment
        if seg is not None and seg.contested and not seg.decided:
            return PAUSED_HANGOVER_MS
        return self.options.end_of_turn_ms if seg is not None else self.options.vad_hangover_ms

    @property
    def idle(self) -> bool:
        """Nothing in progress: no segment (no speech, no verdict owed) and no interrupting turn that may go on — a
        window that cannot start speech changes nothing now, so the driver may hand it over late."""
        return self.segment is None and self._pending_turn is None

    def on_window(self, w: VadWindow, t_ms: float) -> None:
        """One VAD window has been classified; ``t_ms`` is the media time at which its result is known."""
        pending = self._pending_turn
        if pending is not None and w.event != "start" \
                and t_ms - pending[1] >= self.options.end_of_turn_ms - PAUSED_HANGOVER_MS:
            self._pending_turn = None
            if self.turns is not None:
                self.turns.finish(pending[0], pending[3], self._turn_delivery(pending[4], contested=True))
            else:
                self._emit_turn(pending[2], contested=True)
        if w.event == "start":
            self._start(w, t_ms)
        seg = self.segment
        if seg is None:
            return
        if seg.keyword_ms is not None and not seg.decided and t_ms - seg.keyword_ms >= KWS_CONFIRM_MS:
            self._decide(seg, "interrupt", [f"stop_phrase:{seg.keyword}", "unconfirmed"], t_ms)
            return
        if seg.ended_ms is not None:
            if seg.contested and not seg.decided and t_ms - seg.ended_ms > NO_TRANSCRIPT_MS:
                # The transcript never came (ASR failed or is overloaded): never leave the bot paused.
                self._decide(seg, "noise", ["no_transcript"], t_ms)
            return
        seg.prob_sum += w.prob
        seg.windows += 1
        if w.voiced:
            seg.voiced_ms += 1000.0 * 512 / PIPELINE_SAMPLE_RATE
            seg.speculative_end = None
            seg.speculative = None
            seg.voice_end = w.end_samples
        if w.event == "end":
            self._end(seg, w, t_ms)
            return
        seg.silent_windows = 0 if w.voiced else seg.silent_windows + 1
        turns = self.turns
        if turns is not None and seg.silent_windows == turns.speculate_after_windows and self._owns_turn(seg):
            turns.speculate(seg.start_samples, self._turn_end(seg))
        if seg.contested and not seg.decided:
            if seg.silent_windows == SPECULATE_AFTER_WINDOWS and seg.speculative_end is None \
                    and seg.voiced_ms >= self.options.short_sound_ms and seg.asr_failed is None:
                # Silence begins: transcribe now, so the verdict is ready when the hangover confirms the end.
                seg.speculative_end = w.end_samples
                self.request_transcript(seg.segment_id, seg.start_samples, w.end_samples, True)
            elif w.voiced and self._partial_due(seg, t_ms):
                seg.last_partial_ms = t_ms
                self.request_transcript(seg.segment_id, seg.start_samples, w.end_samples, False)
            if t_ms - seg.onset_ms >= self.options.verdict_timeout_ms and seg.reading != "sound" \
                    and not seg.settling:
                self._decide(seg, "interrupt", ["long_speech"], t_ms)

    def on_keyword(self, hit: KeywordHit, t_ms: float) -> None:
        """The spotter heard a stop phrase."""
        seg = self.segment
        if seg is None or not seg.contested or seg.decided:
            return
        if seg.ended_ms is not None and t_ms - seg.ended_ms > KWS_GRACE_MS:
            return
        seg.keyword = hit.phrase
        if seg.reading in ("sound", "backchannel"):
            # The transcripts of this very sound say it is something else ("*sigh*", "Uh-huh."): a spotter hit
            # alone is not enough; the next transcript decides (it still stops if it reads as an interruption).
            return
        if seg.reading != "interrupt":
            # Nothing (or nothing clear) transcribed yet: ask now; the transcript confirms the hit unless it hears
            # something else.
            seg.keyword_ms = t_ms
            self.request_transcript(seg.segment_id, seg.start_samples, hit.end_samples, False)
            return
        self._decide(seg, "interrupt", [f"stop_phrase:{hit.phrase}"], t_ms)

    def _confirm_keyword(self, seg: _Segment, transcript: Transcript, judged: Relevance, t_ms: float) -> bool:
        """A transcript of a sound whose spotter hit waits: stop on the hit (True) unless the transcript says the
        sound is something else — a backchannel, a filler, a non-speech sound (then the transcripts decide)."""
        seg.keyword_ms = None
        if transcript.nonspeech or judged.label == "backchannel" \
                or (judged.label == "ignore" and judged.source == "lexicon"):
            return False
        self._decide(seg, "interrupt", [f"stop_phrase:{seg.keyword}", "confirmed"], t_ms,
                     have_final=transcript.final)
        return True

    def on_transcript(self, segment_id: int, transcript: Transcript, t_ms: float, end_samples: int = -1) -> None:
        """A transcript of ``segment_id`` up to ``end_samples`` is ready.

        It counts as final only if the segment has ended and nothing was voiced after ``end_samples``; otherwise
        it is a partial, which can only ever decide ``interrupt`` (the bot never resumes over a talking user).
        """
        seg = self.segment
        if seg is None or seg.segment_id != segment_id:
            return
        if seg.speculative_end is not None and end_samples == seg.speculative_end:
            seg.speculative = transcript
        final = seg.ended_ms is not None and end_samples == seg.end_samples
        whole = final or end_samples == seg.speculative_end
        self._judge(seg, replace(transcript, final=final), t_ms, whole=whole)

    def on_transcript_failed(self, segment_id: int, end_samples: int, cause: str, t_ms: float) -> None:
        """No transcript will come for this request (ASR overloaded or failed): decide on VAD alone."""
        seg = self.segment
        if seg is None or seg.segment_id != segment_id:
            return
        if seg.keyword_ms is not None and seg.contested and not seg.decided:
            self._decide(seg, "interrupt", [f"stop_phrase:{seg.keyword}", f"asr_{cause}"], t_ms)
        if end_samples not in (seg.speculative_end, seg.end_samples):
            seg.partials_off = True
            return
        seg.asr_failed = cause
        if seg.ended_ms is None:
            return  # decided at the end of the sound (or by the long-speech rule meanwhile)
        if seg.contested and not seg.decided:
            self._decide_without_transcript(seg, cause, t_ms)
        elif not seg.contested or seg.decided:
            self.segment = None  # the turn's words are lost; the agent gets nothing rather than a wrong turn

    def _judge(self, seg: _Segment, transcript: Transcript, t_ms: float, whole: bool = True) -> None:
        """Act on a transcript; ``whole``: it covers the sound up to its first silent window (a speculative
        final), so an interruption in it is as trustworthy as in the final one."""
        seg.texts.append(transcript.text)
        self.sink.on_transcript(transcript.text, transcript.final)
        if not seg.contested or seg.decided:
            if transcript.final:
                self._finish_turn(seg, transcript.spoken)
            return
        judged = self._classify(transcript.spoken)
        if seg.keyword_ms is not None and self._confirm_keyword(seg, transcript, judged, t_ms):
            if transcript.final:
                self._finish_turn(seg, transcript.spoken)
            return
        fields: dict[str, object] = {"transcript": transcript.text, "asr_confidence": round(transcript.confidence, 3),
                                     "relevance": judged.label, "relevance_confidence": round(judged.confidence, 3),
                                     "asr_ms": round(transcript.compute_ms, 1)}
        if transcript.nonspeech:
            seg.reading = "sound"
            if transcript.final:
                self._decide(seg, "noise", ["asr_nonspeech"], t_ms, fields=fields)
            return
        implausible = syllables(transcript.spoken) > self._max_syllables(seg)
        opts = self.options
        short = seg.voiced_ms < opts.uncertain_sound_ms
        doubtful = implausible or (judged.source == "model" and (
            transcript.confidence < opts.floor_asr_confidence
            or (transcript.confidence < opts.min_asr_confidence and short)
            # Only function words ("And then them.") for a short sound: what tiny.en makes of a hum, and which
            # words it picks flips with the CPU's rounding; no evidence of an interruption either way.
            or (short and not content_words(transcript.spoken))))
        previous = (seg.reading, seg.reading_words, seg.reading_confidence)
        seg.reading, seg.reading_words = judged.label, frozenset(content_words(transcript.spoken))
        seg.reading_confidence = transcript.confidence
        if not transcript.final:
            trusted = self._trust_early(seg, transcript, judged, previous, whole) \
                and not (seg.settling and judged.source == "model")
            if judged.label == "interrupt" and not doubtful and trusted \
                    and not self.sink.is_echo_text(transcript.spoken):
                reasons = [f"relevance:{judged.source}", "speculative" if whole else "partial"]
                self._decide(seg, "interrupt", reasons, t_ms, fields=fields)
            return
        if judged.label == "interrupt" and doubtful and not implausible \
                and seg.voiced_ms >= opts.fallback_interrupt_ms:
            # Unclear words, but as much voiced sound as a peer's duration rule stops for, and not a sound the ASR
            # annotated as non-speech: the user is saying something — give them the floor.
            self._decide(seg, "interrupt", ["asr_unclear", "long_sound"], t_ms, have_final=True, fields=fields)
            self._finish_turn(seg, transcript.spoken)
        elif judged.label == "interrupt" and doubtful:
            self._decide(seg, "noise", ["asr_implausible" if implausible else "asr_doubtful"], t_ms, fields=fields)
        elif judged.label == "interrupt" and judged.source == "model" and seg.settling:
            # Words heard before the canceller knows the echo path are most likely the bot's own, misheard
            # ("Let me tell you" → "Let's see."): only a stop phrase may stop the bot then.
            self._decide(seg, "echo", ["echo_settling"], t_ms, fields=fields)
        elif judged.label == "interrupt" and self.sink.is_echo_text(transcript.spoken):
            self._decide(seg, "echo", ["transcript_matches_bot_speech"], t_ms, fields=fields)
        elif judged.label == "interrupt":
            self._decide(seg, "interrupt", [f"relevance:{judged.source}"], t_ms, have_final=True, fields=fields)
            self._finish_turn(seg, transcript.spoken)
        else:
            label = "backchannel" if judged.label == "backchannel" else "noise"
            self._decide(seg, label, [f"relevance:{judged.label}"], t_ms, fields=fields)

    def _trust_early(self, seg: _Segment, transcript: Transcript, judged: Relevance,
                     previous: tuple[str | None, frozenset[str], float], whole: bool) -> bool:
        """May this reading, an interruption, stop the bot before the sound has ended?

        A partial is cut mid-word and tiny.en fills such gaps with plausible words ("yes" → "Good afternoon."), so
        one reading stops the bot early only when it is a stop phrase (in a partial: heard with
        ``partial_stop_confidence``), or covers the whole sound so far with ``early_stop_confidence``. Otherwise
        the reading must be *confirmed*: the previous reading of the same sound was an interruption too, both
        above ``floor_asr_confidence``, sharing a content word ("Actually, I'm in" → "Actually, I meant") —
        invented words for a cough change from one reading to the next ("I have to straight." → "At the straight.").
        The final transcript decides whatever is left.
        """
        opts = self.options
        if judged.source == "lexicon":
            return whole or transcript.confidence >= opts.partial_stop_confidence
        if whole and transcript.confidence >= opts.early_stop_confidence:
            return True
        label, words, confidence = previous
        return (label == "interrupt" and min(confidence, transcript.confidence) >= opts.floor_asr_confidence
                and bool(words & seg.reading_words))

    def _classify(self, text: str) -> Relevance:
        try:
            return self.judge.classify(text)
        except Exception:
            log.exception("relevance judge failed; using the phrase lexicon for this call")
            self.judge = LexiconJudge()
            return self.judge.classify(text)

    def _max_syllables(self, seg: _Segment) -> float:
        """More syllables than this cannot have been said in the voiced audio (a transcript invented for a
        cough or a sneeze)."""
        return self.options.max_syllables_base + self.options.max_syllables_per_sec * seg.voiced_ms / 1000.0

    def _partial_due(self, seg: _Segment, t_ms: float) -> bool:
        interval = self.options.partial_interval_ms
        if interval <= 0 or seg.partials_off or seg.asr_failed is not None \
                or seg.voiced_ms < self.options.short_sound_ms:
            return False
        if seg.last_partial_ms is None:
            return t_ms - seg.onset_ms >= self.options.first_partial_ms
        return t_ms - seg.last_partial_ms >= interval

    def _decide_without_transcript(self, seg: _Segment, cause: str, t_ms: float) -> None:
        if seg.voiced_ms >= self.options.fallback_interrupt_ms:
            self._decide(seg, "interrupt", [f"asr_{cause}", "long_sound"], t_ms)
        else:
            self._decide(seg, "noise", [f"asr_{cause}", "short_sound"], t_ms)

    # -- internals --------------------------------------------------------------------------------------------

    def _start(self, w: VadWindow, t_ms: float) -> None:
        prev = self.segment
        if prev is not None and prev.contested and not prev.decided:
            # More sound while a verdict is owed: one episode, judged on all of it.
            prev.ended_ms = None
            prev.end_samples = None
            return
        contested = self.sink.bot_active
        start = max(0, w.segment_start_samples - 3200)
        if self._pending_turn is not None and not contested:
            # The user goes on after an interruption that ended on the short hangover: one turn, one transcript.
            start = min(start, self._pending_turn[0])
            self._pending_turn = None
        if contested and self._last_contested is not None and t_ms - self._last_contested[1] < EPISODE_JOIN_MS:
            start = min(start, self._last_contested[0])
        self.segment = _Segment(next(self._ids), start, t_ms, contested, settling=contested and self.echo_settling)
        since_onset = (w.end_samples - w.segment_start_samples) / (PIPELINE_SAMPLE_RATE / 1000) + self.input_lag_ms
        self.sink.on_speech_started(t_ms, segment_id=self.segment.segment_id, contested=contested,
                                    since_onset_ms=round(since_onset, 1))

    def _end(self, seg: _Segment, w: VadWindow, t_ms: float) -> None:
        seg.short_end = seg.contested and not seg.decided
        seg.ended_ms = t_ms
        seg.end_samples = w.end_samples
        self.sink.on_speech_ended(t_ms, segment_id=seg.segment_id, voiced_ms=round(seg.voiced_ms))
        if self.turns is not None and self._owns_turn(seg) and seg.voiced_ms >= self.options.short_sound_ms:
            seg.turn_handed = True
            self.turns.finish(seg.start_samples, self._turn_end(seg),
                              self._turn_delivery(seg.keyword, seg.contested))
        if seg.contested and not seg.decided and seg.voiced_ms < self.options.short_sound_ms \
                and seg.keyword_ms is None:
            self._decide(seg, "noise", ["short_sound"], t_ms)
            return
        if seg.asr_failed is not None:
            if seg.contested and not seg.decided:
                self._decide_without_transcript(seg, seg.asr_failed, t_ms)
            else:
                self.segment = None
            return
        if seg.speculative_end is not None:
            seg.end_samples = seg.speculative_end
            if seg.speculative is not None:
                self._judge(seg, replace(seg.speculative, final=True), t_ms)
            return  # the speculative transcript, when it arrives, is the final one
        self.request_transcript(seg.segment_id, seg.start_samples, w.end_samples, True)

    def _decide(self, seg: _Segment, label: str, reasons: list[str], t_ms: float, have_final: bool = False,
                fields: dict[str, object] | None = None) -> None:
        fields = fields or {}
        seg.decided = True
        if seg.contested:
            self._last_contested = (seg.start_samples, seg.ended_ms if seg.ended_ms is not None else t_ms)
        verdict = {"label": label, "reasons": reasons, "ms_since_onset": round(t_ms - seg.onset_ms, 1), **fields}
        self.verdicts.append({"t_ms": t_ms, **verdict})
        self.sink.on_verdict(label, reasons, ms_since_onset=verdict["ms_since_onset"], **fields)
        if label != "interrupt":
            self.segment = None
            return
        if self.turns is not None and seg.voice_end and seg.silent_windows >= self.turns.speculate_after_windows:
            self.turns.speculate(seg.start_samples, self._turn_end(seg))  # decided in the silence after the sound
        if seg.ended_ms is not None and seg.end_samples is not None and not have_final:
            self.request_transcript(seg.segment_id, seg.start_samples, seg.end_samples, True)

    def _finish_turn(self, seg: _Segment, text: str) -> None:
        if seg.ended_ms is None:
            return
        self.segment = None
        if seg.turn_handed:
            return  # the turn transcriber delivers this turn
        text = self._keyword_rule(text, seg.keyword)
        if seg.short_end:
            # The sound ended on the short hangover used while a verdict was owed; the turn ends only after
            # ``end_of_turn_ms`` of silence ("wait, … how far away is the moon").
            turn_end = self._turn_end(seg)
            self._pending_turn = (seg.start_samples, seg.ended_ms, text, turn_end, seg.keyword)
            if self.turns is not None:
                self.turns.speculate(seg.start_samples, turn_end)
            return
        self._emit_turn(text, seg.contested)

    def _keyword_rule(self, text: str, keyword: str | None) -> str:
        if keyword is not None and len(text.split()) <= 1 and normalize(text) not in self._stop_lexicon:
            # One short word that the spotter heard as a stop phrase and the transcript as something else
            # ("stop" → "start"): the spotter's reading wins, so a bare stop command stays a bare stop command.
            return keyword
        return text

    def _emit_turn(self, text: str, contested: bool, fields: dict[str, object] | None = None) -> None:
        if self.judge.classify(text).label != "ignore" or contested:
            self.sink.on_user_turn_ended(text, **(fields or {"engine": "reflex"}))

    def _owns_turn(self, seg: _Segment) -> bool:
        """The user holds the floor in this sound: it started in silence, or it interrupted the bot."""
        return not seg.contested or (seg.decided and self.segment is seg)

    def _turn_end(self, seg: _Segment) -> int:
        """Where a turn's audio ends: a fixed margin after its last voiced window, so that the decode started when
        the silence began covers the same audio as the turn confirmed later."""
        margin = WINDOW_SAMPLES * (self.turns.speculate_after_windows if self.turns is not None else 1)
        end = seg.voice_end + margin if seg.voice_end else seg.start_samples
        return end if seg.end_samples is None else min(end, max(seg.end_samples, seg.start_samples))

    def _turn_delivery(self, keyword: str | None, contested: bool) -> Callable[[str, dict[str, object]], None]:
        def deliver(text: str, fields: dict[str, object]) -> None:
            self._emit_turn(self._keyword_rule(text, keyword), contested, fields)

        return deliver
