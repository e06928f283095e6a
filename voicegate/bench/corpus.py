"""Scenario manifests (JSON Lines) and the built-in corpus generated from ``../shared/data`` and espeak-ng."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from voicegate.tts.espeak import EspeakTts

LABELS = ("interrupt", "backchannel", "noise", "echo")
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"

VOICES = ("en-us", "en-us+f3", "en-gb", "en-us+m7")
SYNTH_INTERRUPTS = (
    "stop", "wait", "hold on", "hang on", "wait a second", "no no no", "cancel that", "what about tomorrow",
    "can you repeat that", "actually I meant Tuesday", "shut up", "be quiet please", "excuse me",
    "sorry, what was that",
)
VOCAL_CLASSES = ("coughing", "laughing", "throat-clearing", "sneezing", "sighing", "panting", "yawning")
SYNTH_BACKCHANNELS = ("uh-huh", "mm-hmm", "okay", "yeah", "right", "I see", "got it", "sure", "oh wow",
                      "that's great")


class ManifestError(ValueError):
    """A manifest line is unusable; the message names the line and the problem."""


@dataclass(frozen=True)
class Scenario:
    """One line of a manifest.

    ``audio`` is the user's clip (any rate/format ``av`` reads), mixed in ``at_s`` seconds after the bot starts
    speaking, at ``gain_db``. Extensions beyond the contract (all optional): ``noise`` (a bed under everything),
    ``noise_gain_db``, ``echo_delay_ms`` / ``echo_gain_db`` (the bot's own voice leaking back; ``echo`` scenarios
    get a default echo; ``echo_rt60_s`` / ``echo_codec`` (``mulaw``, ``opus``) / ``echo_drift_ms`` make the echo
    path a room, a codec and a drifting delay), ``group`` (a finer class reported on its own, e.g. ``vocal``).
    """

    id: str
    label: str
    audio: Path | None
    at_s: float
    gain_db: float = 0.0
    transcript: str | None = None
    bot_text: str | None = None
    noise: Path | None = None
    noise_gain_db: float = -20.0
    echo_delay_ms: float | None = None
    echo_gain_db: float = -10.0
    group: str | None = None
    """A finer class for the report (e.g. ``vocal`` for non-speech vocal sounds, ``stop_phrase``)."""
    echo_rt60_s: float = 0.0
    echo_codec: str = "none"
    echo_drift_ms: float = 0.0

    def to_json(self, base: Path) -> str:
        """One manifest line, paths relative to ``base`` where possible."""
        data = {k: v for k, v in asdict(self).items() if v is not None}
        for key in ("audio", "noise"):
            if key in data:
                path = Path(data[key])
                data[key] = str(path.relative_to(base)) if path.is_relative_to(base) else str(path)
        return json.dumps(data)


def load_manifest(path: Path) -> list[Scenario]:
    """Read a JSON Lines manifest; relative paths resolve against its folder."""
    base = path.resolve().parent
    out = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            label = data["label"]
            if label not in LABELS:
                raise ManifestError(f"{path}:{number}: label must be one of {LABELS}, got {label!r}")
            audio = data.get("audio")
            noise = data.get("noise")
            out.append(Scenario(
                id=str(data["id"]), label=label, audio=(base / audio) if audio else None,
                at_s=float(data["at_s"]), gain_db=float(data.get("gain_db", 0.0)),
                transcript=data.get("transcript"), bot_text=data.get("bot_text"),
                noise=(base / noise) if noise else None, noise_gain_db=float(data.get("noise_gain_db", -20.0)),
                echo_delay_ms=(float(data["echo_delay_ms"]) if "echo_delay_ms" in data
                               else (120.0 if label == "echo" else None)),
                echo_gain_db=float(data.get("echo_gain_db", -10.0)),
                group=str(data["group"]) if data.get("group") else None,
                echo_rt60_s=float(data.get("echo_rt60_s", 0.0)), echo_codec=str(data.get("echo_codec", "none")),
                echo_drift_ms=float(data.get("echo_drift_ms", 0.0)),
            ))
        except ManifestError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"{path}:{number}: {exc!r}") from None
        if out[-1].echo_codec not in ("none", "mulaw", "opus"):
            raise ManifestError(f"{path}:{number}: echo_codec must be none, mulaw or opus, got {out[-1].echo_codec!r}")
        if out[-1].audio is not None and not out[-1].audio.exists():
            raise ManifestError(f"{path}:{number}: audio file {out[-1].audio} not found")
    if not out:
        raise ManifestError(f"{path}: no scenarios")
    return out


def _synth(folder: Path, voice: str, phrase: str, rate: int) -> Path:
    slug = "".join(c if c.isalnum() else "_" for c in phrase)
    path = folder / f"{voice.replace('+', '_')}-{rate}-{slug}.wav"
    if not path.exists():
        speech = asyncio.run(EspeakTts(voice=voice, words_per_minute=rate, sample_rate=16_000).synthesize(phrase))
        sf.write(path, speech.pcm, 16_000, subtype="PCM_16")
    return path


def build_builtin(out_dir: Path, quick: bool, shared: Path = SHARED) -> Path:
    """Write the built-in corpus (synthesized clips + ``scenarios.jsonl``) under ``out_dir`` and return the
    manifest path. The full corpus has ≥ 200 scenarios; ``quick`` a stratified ≥ 40."""
    if not shared.is_dir():
        raise ManifestError(f"{shared} not found: the built-in corpus reads ../shared/data (or pass --corpus)")
    folder = out_dir / "corpus"
    (folder / "synth").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    beds = sorted((shared / "noise" / "background" / "data" / "_background_noise_").glob("*.wav"))
    scenarios: list[Scenario] = []

    def at() -> float:
        return round(float(rng.uniform(1.5, 4.0)), 2)

    def bed() -> tuple[Path | None, float]:
        return (beds[int(rng.integers(len(beds)))], float(rng.choice([-30.0, -24.0]))) if rng.random() < 0.2 \
            else (None, -20.0)

    cmd = shared / "speech" / "speech_commands"
    for word, label in (("stop", "interrupt"), ("no", "interrupt"), ("yes", "backchannel"),
                        ("right", "backchannel")):
        for i, path in enumerate(sorted((cmd / word).glob("*.wav"))):
            for rep in range(3):
                noise, noise_db = bed()
                scenarios.append(Scenario(f"{word}-{i}-{rep}", label, path, at(), 0.0, word, noise=noise,
                                          noise_gain_db=noise_db))
    for phrase_set, label in ((SYNTH_INTERRUPTS, "interrupt"), (SYNTH_BACKCHANNELS, "backchannel")):
        for phrase in phrase_set:
            for voice in VOICES:
                rate = int(rng.choice([150, 175, 200]))
                noise, noise_db = bed()
                scenarios.append(Scenario(f"tts-{voice}-{phrase}", label, _synth(folder / "synth", voice, phrase, rate),
                                          at(), 0.0, phrase, noise=noise, noise_gain_db=noise_db))
    esc = shared / "noise" / "esc10" / "audio"
    for cls in ("person_sneeze", "dog_bark", "clock_tick", "baby_cry", "rooster"):
        for i, path in enumerate(sorted((esc / cls).glob("*.ogg"))[:8]):
            scenarios.append(Scenario(f"{cls}-{i}", "noise", path, at(), float(rng.choice([-12.0, -6.0, 0.0]))))
    vocal = shared / "noise" / "vocal"
    for cls in VOCAL_CLASSES:
        # Non-speech vocal sounds by different speakers (CC BY-NC-ND: read in place, benchmark only).
        for i, path in enumerate(sorted((vocal / cls).glob("*.flac"))[:6]):
            scenarios.append(Scenario(f"vocal-{cls}-{i}", "noise", path, at(), float(rng.choice([-6.0, 0.0])),
                                      group="vocal"))
    for path in sorted((shared / "noise" / "freesound").glob("*.wav")):
        scenarios.append(Scenario(f"freesound-{path.stem}", "noise", path, at(), -6.0))
    for path in beds:
        scenarios.append(Scenario(f"bed-{path.stem}", "noise", path, at(), -18.0))
    for delay in (50, 70, 90, 110, 130, 150, 170, 200):
        for gain_db in (-6.0, -12.0):
            noise, noise_db = bed()
            scenarios.append(Scenario(f"echo-{delay}ms{int(gain_db)}dB", "echo", None, at(), 0.0,
                                      echo_delay_ms=float(delay), echo_gain_db=gain_db, noise=noise,
                                      noise_gain_db=noise_db))
    if quick:
        scenarios = _stratified(scenarios, 48)
    manifest = folder / ("quick.jsonl" if quick else "scenarios.jsonl")
    manifest.write_text("".join(s.to_json(folder) + "\n" for s in scenarios))
    return manifest


def _stratified(scenarios: list[Scenario], total: int) -> list[Scenario]:
    by_label = {label: [s for s in scenarios if s.label == label] for label in LABELS}
    share = {"interrupt": 0.35, "backchannel": 0.3, "noise": 0.25, "echo": 0.1}
    out = []
    for label, items in by_label.items():
        n = max(1, round(total * share[label]))
        step = max(1, len(items) // n)
        out += items[::step][:n]
    return out
