"""How often the keyword spotter hears a stop phrase in sounds that are not one.

``python -m voicegate.bench.kws_eval [--out FILE]``

Two measurements:

- **spotter alone**: every clip through a fresh utterance of :class:`~voicegate.asr.kws.KeywordSpotter` (half a
  second of silence either side): recorded words and sentences in ``../shared/data`` (Speech Commands' 30 words,
  Free Spoken Digits, barista orders), the backchannel-like recorded words ("yes", "right") and espeak-ng
  backchannels ("uh-huh", "mm-hmm", …) in several voices, rates and pitches;
- **through the gate**: every backchannel spoken while the bot talks (:func:`~voicegate.bench.scenario.run_scenario`,
  modelled clock), where the spotter hears it in context (after seconds of the call): did the spotter fire, did the
  bot stop, and why.

Synthesized voices stand in for recorded backchannels, which ``../shared/data`` does not have (its README).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from voicegate.asr.kws import KeywordHit, KeywordSpotter
from voicegate.audio.pcm import load_audio
from voicegate.bench.corpus import SHARED
from voicegate.config import GateOptions
from voicegate.tts.espeak import EspeakTts

SYNTH_BACKCHANNELS = ("uh-huh", "mm-hmm", "mhm", "uh huh", "okay", "yeah", "right", "I see", "got it", "sure",
                      "yep", "yes", "oh wow", "that's great")
SYNTH_VOICES = ("en-us", "en-us+f3", "en-gb", "en-us+m7", "en-us+f2", "en-gb-x-rp+f4")
SYNTH_RATES = (140, 200)
SYNTH_PITCHES = (35, 70)
RECORDED_BACKCHANNEL_WORDS = ("yes", "right")
STOP_WORDS = ("stop",)
MIC_CHUNK = 320


@dataclass(frozen=True)
class Clip:
    """One sound: where it came from, what it is (``backchannel``, ``speech``, ``stop``) and its audio."""

    name: str
    kind: str
    pcm: np.ndarray


def synthesized_backchannels(phrases: tuple[str, ...] = SYNTH_BACKCHANNELS, voices: tuple[str, ...] = SYNTH_VOICES,
                             rates: tuple[int, ...] = SYNTH_RATES,
                             pitches: tuple[int, ...] = SYNTH_PITCHES) -> list[Clip]:
    """espeak-ng backchannels at 16 kHz, every phrase in every voice, rate and pitch."""
    async def one(phrase: str, voice: str, rate: int, pitch: int) -> Clip:
        speech = await EspeakTts(voice=voice, words_per_minute=rate, pitch=pitch, sample_rate=16_000).synthesize(phrase)
        return Clip(f"espeak:{voice}:{rate}:{pitch}:{phrase}", "backchannel", speech.pcm)

    async def all_of_them() -> list[Clip]:
        return list(await asyncio.gather(*(one(p, v, r, t) for p in phrases for v in voices for r in rates
                                           for t in pitches)))
    return asyncio.run(all_of_them())


def recorded_clips(shared: Path = SHARED, fsdd_every: int = 10, barista_every: int = 4) -> list[Clip]:
    """Recorded speech in ``shared``: backchannel-like words, every other Speech Commands word, digits, orders."""
    out: list[Clip] = []
    commands = shared / "speech" / "speech_commands"
    for folder in sorted(p for p in commands.iterdir() if p.is_dir()):
        kind = "backchannel" if folder.name in RECORDED_BACKCHANNEL_WORDS else \
            "stop" if folder.name in STOP_WORDS else "speech"
        out += [Clip(f"speech_commands:{folder.name}:{p.name}", kind, load_audio(p, 16_000))
                for p in sorted(folder.glob("*.wav"))]
    out += [Clip(f"fsdd:{p.name}", "speech", load_audio(p, 16_000))
            for p in sorted((shared / "speech" / "fsdd" / "recordings").glob("*.wav"))[::fsdd_every]]
    out += [Clip(f"barista:{p.name}", "speech", load_audio(p, 16_000))
            for p in sorted((shared / "speech" / "barista" / "speech").glob("*.wav"))[::barista_every]]
    return out


def spotter_hits(clips: list[Clip], phrases: tuple[str, ...] = GateOptions().stop_phrases) -> dict[str, list[str]]:
    """Per clip name: the phrases the spotter reported (fresh utterance per clip, streamed in 20 ms chunks)."""
    kws = KeywordSpotter(phrases)
    silence = np.zeros(8000, np.int16)
    hits: dict[str, list[str]] = {}
    for clip in clips:
        kws.reset()
        audio = np.concatenate([silence, clip.pcm.astype(np.int16), silence])
        heard: list[str] = []
        for i in range(0, len(audio), MIC_CHUNK):
            heard += [h.phrase for h in kws.feed(audio[i:i + MIC_CHUNK])]
        hits[clip.name] = heard
    return hits


def gate_outcomes(clips: list[Clip], at_s: float = 2.0) -> list[dict[str, Any]]:
    """Each clip spoken over the bot (modelled clock): stopped or not, and the first verdict's reasons."""
    from voicegate.agent.demo import MONOLOGUE
    from voicegate.bench.scenario import run_scenario
    from voicegate.gate.driver import default_asr
    from voicegate.gate.relevance import load_judge

    bot = asyncio.run(EspeakTts().synthesize(" ".join(MONOLOGUE[:3])))
    judge, asr = load_judge(), default_asr()
    rows = []
    fired: list[str] = []
    feed = KeywordSpotter.feed

    def counting_feed(self: KeywordSpotter, pcm: np.ndarray) -> list[KeywordHit]:
        hits = feed(self, pcm)
        fired.extend(h.phrase for h in hits)
        return hits

    KeywordSpotter.feed = counting_feed  # type: ignore[method-assign]  # count the gate's own spotter's hits
    try:
        for clip in clips:
            fired.clear()
            o = run_scenario(bot, clip.pcm, at_s, judge, asr, modelled_clock=True)
            verdict = o.verdicts[0] if o.verdicts else {}
            rows.append({"clip": clip.name, "kind": clip.kind, "spotter": list(fired), "stopped": o.stopped,
                         "verdict": verdict.get("label"), "reasons": verdict.get("reasons", []),
                         "transcripts": [e["text"] for e in o.events if e["type"] in ("asr.partial", "asr.final")]})
    finally:
        KeywordSpotter.feed = feed  # type: ignore[method-assign]
    return rows


def summarize(clips: list[Clip], hits: dict[str, list[str]]) -> dict[str, Any]:
    """Spotter hit rates per kind and source, and which phrases fired."""
    out: dict[str, Any] = {}
    for kind in sorted({c.kind for c in clips}):
        for source in sorted({c.name.split(":")[0] for c in clips if c.kind == kind}):
            group = [c for c in clips if c.kind == kind and c.name.startswith(source + ":")]
            fired = [c for c in group if hits[c.name]]
            out[f"{kind}/{source}"] = {"clips": len(group), "spotter_fired": len(fired),
                                       "rate": round(len(fired) / max(1, len(group)), 4),
                                       "phrases": dict(Counter(h for c in fired for h in hits[c.name]))}
    return out


def main(argv: list[str] | None = None) -> int:
    """Measure and print the spotter's false alarms; ``--out FILE`` also writes them as JSON."""
    args = sys.argv[1:] if argv is None else argv
    out_path = Path(args[args.index("--out") + 1]) if "--out" in args else None
    clips = synthesized_backchannels() + recorded_clips()
    hits = spotter_hits(clips)
    report: dict[str, Any] = {"spotter": summarize(clips, hits)}
    rows = gate_outcomes([c for c in clips if c.kind == "backchannel"])
    stops = [r for r in rows if r["stopped"]]
    kws_stops = [r for r in stops if any(str(x).startswith("stop_phrase:") for x in r["reasons"])]
    report["gate"] = {"backchannels": len(rows), "spotter_fired": sum(bool(r["spotter"]) for r in rows),
                      "stopped": len(stops), "stopped_by_spotter": len(kws_stops),
                      "spotter_false_stop_rate": round(len(kws_stops) / max(1, len(rows)), 4),
                      "false_stop_rate": round(len(stops) / max(1, len(rows)), 4), "rows": rows}
    print(json.dumps({k: v for k, v in report["gate"].items() if k != "rows"}, indent=1))
    print(json.dumps(report["spotter"], indent=1))
    for r in rows:
        if r["spotter"] or r["stopped"]:
            print(f"  {r['clip']}: spotter={r['spotter']} stopped={r['stopped']} {r['verdict']} {r['reasons']} "
                  f"{r['transcripts'][:3]}")
    if out_path is not None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
