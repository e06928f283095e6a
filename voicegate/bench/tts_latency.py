"""First-audio latency of the TTS engines: ``python -m voicegate.bench.tts_latency [rounds]``.

For each sentence of the demo monologue (the greeting first), the time from ``synthesize`` to the audio being
ready — what the first sentence of a reply waits before its first frame can play — for the espeak-ng command line
and pyttsx3, alternating, on the event loop as a call uses them. The first pyttsx3 call of a process also pays its
engine's start-up (reported apart). Then the same with four calls starting a reply at once: pyttsx3 serialises
every synthesis on its one thread, the command line runs one process per sentence.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import numpy as np

from voicegate.agent.demo import GREETING, MONOLOGUE
from voicegate.bench.asr_eval import lscpu_model
from voicegate.tts.base import Tts
from voicegate.tts.espeak import EspeakTts
from voicegate.tts.pyttsx import PyttsxTts

CALLS = 4
"""Calls starting a reply at the same moment (a worker's default capacity)."""


async def _time(tts: Tts, text: str) -> float:
    t0 = time.perf_counter()
    await tts.synthesize(text)
    return (time.perf_counter() - t0) * 1000


async def measure(rounds: int = 3) -> dict[str, object]:
    """Median / p95 ms per engine over ``rounds`` × the greeting and monologue."""
    engines: dict[str, Tts] = {"espeak-ng CLI": EspeakTts(), "pyttsx3": PyttsxTts()}
    cold = {name: await _time(tts, "Hello.") for name, tts in engines.items()}
    times: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(rounds):
        for text in (GREETING, *MONOLOGUE):
            for name, tts in engines.items():
                times[name].append(await _time(tts, text))
    concurrent: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(rounds):
        for i in range(0, len(MONOLOGUE) - CALLS + 1, CALLS):
            for name, tts in engines.items():  # CALLS calls start a reply at the same moment
                concurrent[name] += await asyncio.gather(*(_time(tts, t) for t in MONOLOGUE[i:i + CALLS]))
    from voicegate.tts.pyttsx import _engine

    return {"cpu": lscpu_model(), "sentences": len(times["pyttsx3"]), "pyttsx3_retries": _engine().retries,
            "cold_first_call_ms": {
        k: round(v, 1) for k, v in cold.items()}, "first_audio_ms": {
        name: {"p50": round(float(np.percentile(v, 50)), 1), "p95": round(float(np.percentile(v, 95)), 1)}
        for name, v in times.items()}, f"first_audio_ms_{CALLS}_calls_at_once": {
        name: {"p50": round(float(np.percentile(v, 50)), 1), "p95": round(float(np.percentile(v, 95)), 1)}
        for name, v in concurrent.items()}}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 3)), indent=1))
