"""``voicegate bench``: every policy on the same audio, through the real pipeline, with medians and p95s."""

from __future__ import annotations

import asyncio
import hashlib
import json
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from voicegate.agent.demo import MONOLOGUE
from voicegate.asr.base import Transcript, UtteranceAsr
from voicegate.audio.pcm import gain, load_audio
from voicegate.audio.vad import SileroVad
from voicegate.bench.asr_eval import lscpu_model
from voicegate.bench.corpus import Scenario, build_builtin, load_manifest
from voicegate.bench.echo_path import Echo
from voicegate.bench.live import live_pass, render_live
from voicegate.bench.metrics import by_group, by_label, summarize
from voicegate.bench.peer_integrations import LIVEKIT_VOICEGATE, PIPECAT_VOICEGATE
from voicegate.bench.plots import latency_cdfs, timeline
from voicegate.bench.policies import (
    DEFAULT_POLICIES,
    EMULATIONS,
    INTEGRATION_DEFAULTS,
    INTEGRATIONS,
    PEERS,
    package_versions,
    resolve_policies,
)
from voicegate.bench.scenario import Outcome, run_scenario
from voicegate.config import GateOptions
from voicegate.gate.driver import default_asr
from voicegate.gate.relevance import STOP_PHRASES, load_judge, normalize
from voicegate.tts.base import Speech
from voicegate.tts.espeak import EspeakTts

MAX_CLIP_SECS = 6.0
TARGETS = {  # the reflex layer's and the transcript stage's targets
    "time_to_pause_ms.p95": 100.0, "false_stop_rate": 0.03, "missed_stop_rate": 0.02, "resume_gap_ms.p50": 700.0,
    "stop_phrase_verdict_after_end_ms.p95": 300.0, "resume_after_sound_end_ms.p50": 400.0,
    "resume_after_sound_end_ms.p95": 700.0, "per_group.vocal.false_stop_rate": 0.03, "cpu_per_audio_s.asr": 0.02,
}


@dataclass
class CachingAsr:
    """Transcribes each distinct segment once per run and replays it, *with its measured compute time*, when
    another policy asks for the same audio (the decision is still delayed by the real cost)."""

    inner: UtteranceAsr
    name: str = "cached"
    cache: dict[bytes, Transcript] = field(default_factory=dict)

    def transcribe(self, pcm: np.ndarray) -> Transcript:
        """Transcribe, or replay a previous identical request."""
        key = hashlib.blake2b(pcm.tobytes(), digest_size=16).digest()
        if key not in self.cache:
            self.cache[key] = self.inner.transcribe(pcm)
        return self.cache[key]


def _bot(text: str | None, cache: dict[str, Speech]) -> Speech:
    text = text or " ".join(MONOLOGUE[:4])
    if text not in cache:
        cache[text] = asyncio.run(EspeakTts().synthesize(text))
    return cache[text]


def _row(sc: Scenario, o: Outcome) -> dict[str, Any]:
    stop_phrase = bool(sc.transcript) and normalize(sc.transcript or "") in {normalize(p) for p in STOP_PHRASES}
    return {
        "id": sc.id, "label": sc.label, "onset_ms": round(o.onset_ms, 1), "sound_end_ms": round(o.sound_end_ms, 1),
        "pause_ms": o.pause_ms, "silence_ms": o.silence_ms, "stop_ms": _r(o.stop_ms), "resume_ms": _r(o.resume_ms),
        "verdict_ms": _r(o.verdict_ms), "verdict": o.verdicts[0]["label"] if o.verdicts else None,
        "reasons": o.verdicts[0]["reasons"] if o.verdicts else [],
        "remaining_at_stop_s": round(o.remaining_at_stop_s, 3),
        "bot_after_onset_s": round(o.bot_after_onset_s, 3), "stop_phrase": stop_phrase, "group": sc.group,
        **{k: v for k, v in o.extra.items() if k in ("interruptions", "llm_turns")},
    }


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


LIVEKIT = "livekit-1.8"
PEER_NOTES = [
    "pipecat-1.14: Pipecat's VADController + SileroVADAnalyzer (default VADParams, the model in its wheel) and its "
    "UserTurnController with the default start strategies [VADUserTurnStartStrategy, "
    "TranscriptionUserTurnStartStrategy]; a turn start while the bot speaks is an interruption (hard stop, "
    "no resume). Simulated clock, same as voicegate.",
    "pipecat-1.14-minwords2: the same with [MinWordsUserTurnStartStrategy(min_words=2)].",
    "Pipecat gets the transcripts voicegate gets (interim every 250 ms from 400 ms into its VAD's speech, final "
    "at its VAD's end). End of turn (Smart Turn v3) decides when the LLM answers, not barge-in, and is not run.",
    "livekit-1.8: a real livekit-agents AgentSession (livekit-plugins-silero defaults, InterruptionOptions "
    "defaults: min_duration 0.5 s, min_words 0, resume_false_interruption, false_interruption_timeout 2.0 s) "
    "in mode='vad', fed in real time (several scenarios at once); Whisper as a batch STT that LiveKit wraps "
    "in its VAD StreamAdapter. aec_warmup_duration=None: LiveKit's default ignores every interruption for the "
    "first 3 s after the agent first speaks in a call, which would make most scenarios misses here. Its "
    "'adaptive' interruption model runs only in LiveKit Cloud and is left out.",
    "pipecat-1.14+voicegate: voicegate's Pipecat processor pair (voicegate/integrations/pipecat.py) with Pipecat's "
    "LLMUserAggregator (ExternalUserTurnStrategies(enable_interruptions=False)) between them, driven in Pipecat's "
    "direct mode on the simulated clock; the bot's line enters as 40 ms TTSAudioRawFrames pushed at once, the pair's "
    "playout clock ticks every 20 ms and what it pushes is what the caller hears; stops raise Pipecat's own "
    "InterruptionFrame.",
    "livekit-1.8+voicegate: a real AgentSession (vad=None, manual turns) with VoicegateSession attached (input tee, "
    "output clock at the bottom of the output chain, session.interrupt() on a stop), in real time through the same "
    "loudspeaker stand-in as livekit-1.8, three sessions at once; its playout clock ticks with the scenario's.",
]


def run_bench(quick: bool, out_dir: Path, corpus: Path | None = None,
              policies: tuple[str, ...] = DEFAULT_POLICIES,
              live: bool = False, url: str | None = None, live_calls: int = 1, transport: str = "webrtc",
              token: str | None = None, options: GateOptions | None = None,
              modelled_clock: bool = False) -> dict[str, Any]:
    """Run every scenario under every policy; write ``report.json``, ``report.md`` and plots to ``out_dir``.

    With ``live``, the same scenarios are then played through real WebRTC calls to ``voicegate serve`` (``url``,
    or one started here) and the report shows simulated and live figures side by side. With ``modelled_clock``
    the simulated runs are stamped with modelled compute costs (deterministic; ``make test-portable``).
    """
    policies, skipped = resolve_policies(policies)
    for policy, why in skipped.items():
        print(f"voicegate bench: skipping {policy}: {why}", file=sys.stderr)
    if live and "voicegate" not in policies:
        policies = ("voicegate", *policies)
    if not policies:
        raise ValueError("no policy left to run")
    realtime = tuple(p for p in policies if p in (LIVEKIT, LIVEKIT_VOICEGATE))
    simulated = tuple(p for p in policies if p not in realtime)
    t_start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = corpus if corpus is not None else build_builtin(out_dir, quick)
    scenarios = load_manifest(manifest)
    judge = load_judge()
    asr = CachingAsr(default_asr())
    bots: dict[str, Speech] = {}
    rows: dict[str, list[dict[str, Any]]] = {p: [] for p in policies}
    per_scenario: list[dict[str, Any]] = []
    cpu = {"vad": 0.0, "kws": 0.0, "echo": 0.0, "asr": 0.0}
    audio_secs = 0.0
    examples: dict[str, Outcome] = {}
    erle: list[float] = []
    cpu_ms_by_policy = dict.fromkeys(policies, 0.0)
    audio_s_by_policy = dict.fromkeys(policies, 0.0)
    plumbing_ms = dict.fromkeys(policies, 0.0)
    livekit_jobs: list[tuple[Scenario, dict[str, Any], dict[str, Any]]] = []
    progress = tqdm(total=len(scenarios) * len(simulated), desc="bench", unit="run")
    for sc in scenarios:
        clip = load_audio(sc.audio, 16_000)[: int(16_000 * MAX_CLIP_SECS)] if sc.audio else np.zeros(8000, np.int16)
        noise = gain(load_audio(sc.noise, 16_000), sc.noise_gain_db) if sc.noise else None
        echo = Echo(delay_ms=sc.echo_delay_ms, gain_db=sc.echo_gain_db, rt60_s=sc.echo_rt60_s, codec=sc.echo_codec,
                    drift_ms=sc.echo_drift_ms) if sc.echo_delay_ms is not None else None
        entry: dict[str, Any] = {"id": sc.id, "label": sc.label, "at_s": sc.at_s, "outcomes": {}}
        if realtime:
            livekit_jobs.append((sc, entry, {"bot": _bot(sc.bot_text, bots), "clip": gain(clip, sc.gain_db),
                                             "at_s": sc.at_s, "echo": echo, "noise": noise}))
        for policy in simulated:
            if policy == PIPECAT_VOICEGATE:
                from voicegate.bench.peer_integrations import run_pipecat_voicegate

                o = run_pipecat_voicegate(_bot(sc.bot_text, bots), gain(clip, sc.gain_db), sc.at_s, judge, asr,
                                          echo=echo, noise=noise, options=options)
            else:
                o = run_scenario(_bot(sc.bot_text, bots), gain(clip, sc.gain_db), sc.at_s, judge, asr, echo=echo,
                                 noise=noise, policy=policy, options=options, modelled_clock=modelled_clock)
            row = _row(sc, o)
            rows[policy].append(row)
            entry["outcomes"][policy] = {k: v for k, v in row.items() if k not in ("id", "label")}
            cpu_ms_by_policy[policy] += sum(o.cpu_ms.values())
            plumbing_ms[policy] += o.cpu_ms.get("plumbing", 0.0)
            audio_s_by_policy[policy] += len(o.mic) / 16_000
            if policy == "voicegate":
                for key, value in o.cpu_ms.items():
                    cpu[key] += value
                audio_secs += len(o.mic) / 16_000
                if sc.label not in examples:
                    examples[sc.label] = o
                if sc.label == "echo" and o.erle_trace:
                    erle.append(float(np.median([db for t, db in o.erle_trace if t >= sc.at_s * 1000] or [0.0])))
            progress.update(1)
        per_scenario.append(entry)
    progress.close()
    for policy in realtime:
        from voicegate.bench.peer_livekit import LiveKitRunner

        print(f"voicegate bench: {len(livekit_jobs)} scenarios of {policy} through LiveKit's AgentSession in real "
              "time", file=sys.stderr)
        # With voicegate each session also runs voicegate's detectors in real time: three at once keep a 2-core
        # machine inside real time (six fell behind on a shared one, pausing late).
        with_voicegate = policy == LIVEKIT_VOICEGATE
        runner = LiveKitRunner(asr, concurrency=3 if with_voicegate else 6, voicegate=with_voicegate,
                               options=options)
        for (sc, entry, _), o in zip(livekit_jobs, runner.run_many([job for _, _, job in livekit_jobs]),
                                     strict=True):
            row = _row(sc, o)
            rows[policy].append(row)
            entry["outcomes"][policy] = {k: v for k, v in row.items() if k not in ("id", "label")}
        cpu_ms_by_policy[policy] = runner.cpu_s * 1000
        audio_s_by_policy[policy] = runner.audio_s
        plumbing_ms[policy] = runner.plumbing_cpu_s * 1000
    report: dict[str, Any] = {
        "corpus": {"manifest": str(manifest), "builtin": corpus is None, "quick": quick, "scenarios": len(scenarios),
                   "labels": {label: sum(s.label == label for s in scenarios)
                              for label in ("interrupt", "backchannel", "noise", "echo")}},
        "machine": {"cpu": lscpu_model(), "python": platform.python_version()},
        "modelled_clock": modelled_clock,
        "policies": {p: {**summarize(rows[p]), "kind": _kind(p), "per_label": by_label(rows[p]),
                         "per_group": by_group(rows[p]),
                         "cpu_total_per_audio_s": round(cpu_ms_by_policy[p] / 1000 / max(audio_s_by_policy[p], 1e-9),
                                                        4)}
                     for p in policies},
        "integrations": _integrations(rows, policies, plumbing_ms, audio_s_by_policy),
        "peers": {"versions": package_versions(), "skipped": skipped,
                  "notes": PEER_NOTES if any(p in (*PEERS, *INTEGRATIONS) for p in policies) else []},
        "scenarios": per_scenario,
        "wall_secs": 0.0,
    }
    if "voicegate" in policies:
        report["policies"]["voicegate"]["cpu_per_audio_s"] = {k: round(v / 1000 / max(audio_secs, 1e-9), 4)
                                                              for k, v in cpu.items()}
        report["policies"]["voicegate"]["vad_ms_per_window"] = _vad_cost_ms()
        report["policies"]["voicegate"]["echo_cancel"] = bool(options and options.echo_cancel)
        if erle:
            report["policies"]["voicegate"]["echo_erle_db_median"] = round(float(np.median(erle)), 1)
        report["targets"] = _targets(report["policies"])
    if live:
        stop_ids = {r["id"] for r in rows["voicegate"] if r["stop_phrase"]}
        report["live"] = asyncio.run(live_pass(scenarios, url, live_calls, token, stop_ids, transport))
    plots = [latency_cdfs(rows, out_dir)]
    for label, o in examples.items():
        plots.append(timeline(o, f"voicegate — {label}", out_dir / f"timeline_{label}.png"))
    report["plots"] = [p.name for p in plots]
    report["wall_secs"] = round(time.perf_counter() - t_start, 1)
    (out_dir / "report.json").write_text(json.dumps(report, indent=1))
    (out_dir / "report.md").write_text(render_markdown(report))
    return report


def _kind(policy: str) -> str:
    if policy in INTEGRATIONS:
        return "peer + voicegate"
    return "peer code" if policy in PEERS else "emulation" if policy in EMULATIONS else "voicegate"


INTEGRATION_TARGETS = {"false_stop_rate": 0.05, "missed_stop_rate": 0.02, "plumbing_cpu_per_audio_s": 0.03}


def _integrations(rows: dict[str, list[dict[str, Any]]], policies: tuple[str, ...], plumbing_ms: dict[str, float],
                  audio_s: dict[str, float]) -> dict[str, Any]:
    """Per integration: the framework's own interruptions and LLM turns, the plumbing's CPU and the targets."""
    out: dict[str, Any] = {}
    for policy in policies:
        if policy not in INTEGRATIONS:
            continue
        m = summarize(rows[policy])
        stopped = [r for r in rows[policy] if r["stop_ms"] is not None]
        kept = [r for r in rows[policy] if r["stop_ms"] is None]
        info: dict[str, Any] = {
            "plumbing_cpu_per_audio_s": round(plumbing_ms[policy] / 1000 / max(audio_s[policy], 1e-9), 4),
            "framework_interruptions_per_stop": sorted({r.get("interruptions") for r in stopped} - {None}),
            "framework_interruptions_without_stop": sum(r.get("interruptions") or 0 for r in kept),
        }
        if any("llm_turns" in r for r in rows[policy]):
            info["llm_turns_per_stop"] = sorted({r.get("llm_turns") for r in stopped} - {None})
        targets: dict[str, Any] = {}
        for key, limit in INTEGRATION_TARGETS.items():
            value = info[key] if key in info else m[key]
            targets[key] = {"value": value, "target": f"<= {limit}", "met": value is not None and value <= limit}
        default = INTEGRATION_DEFAULTS[policy]
        if rows.get(default):
            base = summarize(rows[default])["apt_s"]
            targets["apt_s.vs_framework_default"] = {"value": m["apt_s"], "target": f"<= {round(base / 3, 3)} (a third "
                                                     f"of {default}'s {base})", "met": m["apt_s"] <= base / 3}
        if rows.get("voicegate"):
            alone = summarize(rows["voicegate"])["apt_s"]
            targets["apt_s.vs_voicegate"] = {"value": m["apt_s"], "target": f"<= {round(alone * 1.1, 3)} (voicegate "
                                             f"alone {alone} + 10 %)", "met": m["apt_s"] <= alone * 1.1}
        info["targets"] = targets
        out[policy] = info
    return out


def _vad_cost_ms() -> float:
    vad = SileroVad()
    window = np.random.default_rng(0).integers(-3000, 3000, 512).astype(np.int16)
    for _ in range(50):
        vad(window)
    t0 = time.perf_counter()
    for _ in range(1000):
        vad(window)
    return round((time.perf_counter() - t0), 4)  # seconds for 1000 windows == ms per window


def _get(metrics: dict[str, Any], dotted: str) -> float | None:
    value: Any = metrics
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _targets(policies: dict[str, Any]) -> dict[str, Any]:
    gate = policies["voicegate"]
    out: dict[str, Any] = {}
    for key, limit in TARGETS.items():
        value = _get(gate, key)
        out[key] = {"value": value, "target": f"<= {limit}", "met": value is not None and value <= limit}
    peers = {p: m for p, m in policies.items() if p in PEERS}
    if peers:
        best = min(m["apt_s"] for m in peers.values())
        out["apt_s.vs_best_peer"] = {"value": gate["apt_s"], "target": f"<= {round(best / 3, 3)} (a third of the "
                                     f"best peer's {best})", "met": gate["apt_s"] <= best / 3}
        for key in ("false_stop_rate", "missed_stop_rate"):
            others = {p: m[key] for p, m in peers.items()}
            out[f"{key}.vs_peers"] = {"value": gate[key], "target": f"< every peer {others}",
                                      "met": all(gate[key] < v for v in others.values())}
    baselines = {p: m["apt_s"] for p, m in policies.items() if p in EMULATIONS}
    if baselines:
        out["apt_s"] = {"value": gate["apt_s"], "target": f"< every baseline {baselines}",
                        "met": all(gate["apt_s"] < v for v in baselines.values())}
    return out


def render_markdown(report: dict[str, Any]) -> str:
    """The tables a person reads."""
    corpus = report["corpus"]
    lines = [f"# voicegate bench — {corpus['scenarios']} scenarios {corpus['labels']}", "",
             f"Manifest: `{corpus['manifest']}`; {report['wall_secs']} s wall; {report['machine']}.", "",
             "| policy | kind | time_to_pause p50/p95 ms | verdict_latency p50/p95 ms | false_stop_rate "
             "| missed_stop_rate | resume_gap p50/p95 ms | apt_s | CPU per audio s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for policy, m in report["policies"].items():
        lines.append(f"| {policy} | {m.get('kind', '')} | {_pp(m['time_to_pause_ms'])} | "
                     f"{_pp(m['verdict_latency_ms'])} | {m['false_stop_rate']} | {m['missed_stop_rate']} | "
                     f"{_pp(m['resume_gap_ms'])} | {m['apt_s']} | {m.get('cpu_total_per_audio_s')} |")
    peers = report.get("peers", {})
    if peers.get("notes") or peers.get("skipped"):
        lines += ["", f"Peer packages: {peers.get('versions') or 'none installed'}.", ""]
        lines += [f"- {note}" for note in peers.get("notes", [])]
        lines += [f"- skipped {p}: {why}" for p, why in peers.get("skipped", {}).items()]
    if any(m.get("kind") == "emulation" for m in report["policies"].values()):
        lines += ["", "`vad_only`, `min_duration` and `min_words` are emulations of Pipecat's, LiveKit's and "
                  "word-count gates' documented defaults on voicegate's components, not the peers' code."]
    lines += ["", "CPU per audio s: the policy's own compute per second of audio (fraction of one core): detectors "
              "and transcripts in the simulated runs; for livekit-1.8 the whole process while its sessions ran "
              "(LiveKit, transcripts and the bench's media clock)."]
    lines += _render_integrations(report)
    gate = report["policies"].get("voicegate")
    if gate:
        lines += ["", "## voicegate per label", "", "| label | n | time_to_pause p50/p95 | verdict p50/p95 | "
                  "stops | resume_gap p50/p95 | apt_s |", "|---|---|---|---|---|---|---|"]
        for label, m in gate["per_label"].items():
            stops = m["missed_stop_rate"] if label == "interrupt" else m["false_stop_rate"]
            kind = "missed" if label == "interrupt" else "false"
            lines.append(f"| {label} | {m['scenarios']} | {_pp(m['time_to_pause_ms'])} | "
                         f"{_pp(m['verdict_latency_ms'])} | {kind} {stops} | {_pp(m['resume_gap_ms'])} | "
                         f"{m['apt_s']} |")
        for group, m in gate.get("per_group", {}).items():
            lines.append(f"| {group} (group) | {m['scenarios']} | {_pp(m['time_to_pause_ms'])} | "
                         f"{_pp(m['verdict_latency_ms'])} | false {m['false_stop_rate']} / missed "
                         f"{m['missed_stop_rate']} | {_pp(m['resume_gap_ms'])} | {m['apt_s']} |")
        lines += ["", f"Stop phrases, stop after the phrase ends: {_pp(gate['stop_phrase_verdict_after_end_ms'])} ms; "
                  f"bot speaking again after the sound ends: {_pp(gate['resume_after_sound_end_ms'])} ms.",
                  f"CPU per second of audio (fraction of one core): {gate.get('cpu_per_audio_s')}; "
                  f"Silero VAD {gate.get('vad_ms_per_window')} ms per 32 ms window.", "", "## Targets", ""]
        for key, t in report.get("targets", {}).items():
            lines.append(f"- {key}: {t['value']} (target {t['target']}) — {'met' if t['met'] else '**NOT MET**'}")
    if "live" in report:
        lines += render_live(report)
    lines.append("")
    return "\n".join(lines)


def _render_integrations(report: dict[str, Any]) -> list[str]:
    """The "what one line buys" table: each framework's default, with voicegate's integration, and voicegate."""
    integrations = report.get("integrations") or {}
    if not integrations:
        return []
    policies = report["policies"]
    lines = ["", "## What one line buys a Pipecat / LiveKit user", "",
             "| policy | time_to_pause p50/p95 ms | false_stop_rate | missed_stop_rate | apt_s | framework "
             "interruptions per stop / without a stop | integration CPU per audio s |", "|---|---|---|---|---|---|---|"]
    for policy, info in integrations.items():
        default = INTEGRATION_DEFAULTS[policy]
        for name in (default, policy):
            m = policies.get(name)
            if m is None:
                continue
            extra = (f"{info['framework_interruptions_per_stop']} / {info['framework_interruptions_without_stop']} | "
                     f"{info['plumbing_cpu_per_audio_s']}") if name == policy else "— | —"
            lines.append(f"| {name} | {_pp(m['time_to_pause_ms'])} | {m['false_stop_rate']} | "
                         f"{m['missed_stop_rate']} | {m['apt_s']} | {extra} |")
    if "voicegate" in policies:
        m = policies["voicegate"]
        lines.append(f"| voicegate (alone) | {_pp(m['time_to_pause_ms'])} | {m['false_stop_rate']} | "
                     f"{m['missed_stop_rate']} | {m['apt_s']} | — | — |")
    lines.append("")
    for policy, info in integrations.items():
        for key, t in info["targets"].items():
            lines.append(f"- {policy} {key}: {t['value']} (target {t['target']}) — "
                         f"{'met' if t['met'] else '**NOT MET**'}")
    return lines


def _pp(p: dict[str, Any]) -> str:
    return f"{p['p50']} / {p['p95']}"
