"""The echo canceller (WebRTC's audio processing module through voicegate's C shim) on simulated echo paths:
room reverberation, a phone or WebRTC codec, delays from 40 to 250 ms."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from voicegate.agent.demo import MONOLOGUE
from voicegate.audio import aec as aec_module
from voicegate.audio.aec import OUTPUT_DELAY_SAMPLES, EchoCanceller, unavailable_reason
from voicegate.audio.echo import EchoControl
from voicegate.audio.pcm import load_audio
from voicegate.bench.echo_path import Echo, EchoPath
from voicegate.tts.espeak import EspeakTts

pytestmark = pytest.mark.skipif(unavailable_reason() is not None,
                                reason=f"echo canceller not built: {unavailable_reason()}")


@pytest.fixture(scope="module")
def bot16() -> np.ndarray:
    return asyncio.run(EspeakTts(sample_rate=16_000).synthesize(" ".join(MONOLOGUE[:4]))).pcm.astype(np.float32)


def _echo(bot16: np.ndarray, echo: Echo) -> np.ndarray:
    path = EchoPath(echo, 1.0, 1.0)
    return np.concatenate([path.process(bot16[i:i + 320]) for i in range(0, len(bot16) - 319, 320)])


def _cancel(mic: np.ndarray, ref: np.ndarray, near_end: np.ndarray | None = None) -> tuple[np.ndarray, EchoCanceller]:
    canceller = EchoCanceller()
    out = np.zeros(len(mic), np.float32)
    n = canceller.n
    for i in range(0, len(mic) - n + 1, n):
        talking = bool(near_end is not None and near_end[i:i + n].any())
        out[i:i + n] = canceller.process(mic[i:i + n], ref[i:i + n], talking)
    return np.concatenate([out[OUTPUT_DELAY_SAMPLES:], np.zeros(OUTPUT_DELAY_SAMPLES, np.float32)]), canceller


def _db(a: np.ndarray, b: np.ndarray) -> float:
    power = [float(np.mean(x.astype(np.float64) ** 2)) + 1e-9 for x in (a, b)]
    return 10 * float(np.log10(power[0] / power[1]))


def test_echo_return_loss_enhancement_over_delays_codecs_and_rooms(bot16: np.ndarray) -> None:
    erle = []
    for i, (delay, codec) in enumerate([(40, "mulaw"), (120, "opus"), (200, "mulaw"), (250, "opus")]):
        echo = _echo(bot16, Echo(delay_ms=delay, gain_db=0, rt60_s=0.3, codec=codec, seed=i))
        cleaned, canceller = _cancel(echo, bot16[:len(echo)])
        erle.append(_db(echo[32_000:], cleaned[32_000:]))  # after two seconds of bot speech
        assert canceller.converged and not canceller.failed
    assert float(np.median(erle)) >= 20.0, erle


def test_a_user_talking_over_the_echo_comes_through_and_the_filter_does_not_diverge(bot16: np.ndarray,
                                                                                      shared_data: Path) -> None:
    user = load_audio(sorted((shared_data / "speech/speech_commands/stop").glob("*.wav"))[7], 16_000)
    echo = _echo(bot16, Echo(delay_ms=120, gain_db=0, rt60_s=0.3, codec="mulaw", seed=3))
    at = 16_000 * 3
    speech = np.zeros_like(echo)
    level = np.sqrt(np.mean(echo[16_000:at] ** 2)) / np.sqrt(np.mean(user.astype(np.float32) ** 2))
    speech[at:at + len(user)] = user * level
    cleaned, canceller = _cancel(echo + speech, bot16[:len(echo)], near_end=np.abs(speech) > 0)
    during = slice(at, at + len(user))
    kept = np.corrcoef(cleaned[during], speech[during])[0, 1]
    assert kept > 0.5, "the user's voice is what is left while they talk over the echo"
    after = slice(at + len(user) + 8000, len(echo))
    assert _db(echo[after], cleaned[after]) >= 20.0, "still cancelling after the double talk"
    assert canceller.resets <= 2 and not canceller.failed


def test_output_lags_by_the_documented_processing_delay() -> None:
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 2000, 16_000 * 2).astype(np.float32)
    canceller = EchoCanceller()
    n = canceller.n
    out = np.concatenate([canceller.process(noise[i:i + n], np.zeros(n, np.float32), True)
                          for i in range(0, len(noise) - n + 1, n)]).astype(np.float32)
    base = 8000
    corr = [abs(float(np.dot(out[base + OUTPUT_DELAY_SAMPLES + d:base + OUTPUT_DELAY_SAMPLES + d + 8000],
                             noise[base:base + 8000]))) for d in range(-40, 41)]
    assert int(np.argmax(corr)) - 40 == 0, "the near end comes out OUTPUT_DELAY_SAMPLES later, unchanged in timing"
    canceller.close()
    canceller.close()  # idempotent
    assert len(canceller.process(noise[:n], np.zeros(n, np.float32), False)) == n, "a closed canceller passes audio"


def test_without_the_library_the_gate_keeps_the_echo_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aec_module, "_lib", None)
    monkeypatch.setattr(aec_module, "_load_error", "not built (test)")
    control = EchoControl(24_000, correlation=0.5, cancel=True)
    assert control.aec is None
    chunk = (np.random.default_rng(1).normal(0, 1000, 320)).astype(np.int16)
    raw, clean = control.cancel(chunk)
    assert np.array_equal(raw, chunk) and np.array_equal(clean, chunk), "no canceller, no change, no delay"


def test_a_chunk_processed_late_is_anchored_where_it_arrived(bot16: np.ndarray) -> None:
    """The detector thread may run a call's chunk up to an idle tick after it arrived: with the bot's audio sent by
    then (read on arrival), the canceller's output is the same as for chunks run as they arrive; read when the
    chunk runs, the reference would slide by the wait and the anchor jump back and forth."""
    bot = bot16.astype(np.int16)
    echo = _echo(bot16, Echo(delay_ms=120, gain_db=0, rt60_s=0.3, codec="opus", seed=5))
    frames = [(bot[i:i + 320], echo[i:i + 320]) for i in range(0, len(echo) - 319, 320)]

    def run(backlog: int, on_arrival: bool) -> tuple[np.ndarray, EchoControl]:
        control = EchoControl(16_000, correlation=0.5, cancel=True)
        waiting: list[tuple[np.ndarray, int | None]] = []
        out = []
        for sent, heard in frames:
            control.add_outbound(sent)
            waiting.append((heard, control.outbound_samples() if on_arrival else None))
            if len(waiting) == backlog:
                out += [control.cancel(pcm, anchor)[1] for pcm, anchor in waiting]
                waiting.clear()
        return np.concatenate(out), control

    prompt, control = run(1, on_arrival=True)
    assert control.reanchors == 0 and control.engaged
    assert _db(echo[32_000:len(prompt)], prompt[32_000:].astype(np.float32)) >= 15.0, "the echo is cancelled"
    late, control = run(6, on_arrival=True)
    assert control.reanchors == 0
    n = min(len(prompt), len(late))
    assert np.array_equal(late[:n], prompt[:n]), "a late chunk is cleaned exactly as one run on arrival"
    _, control = run(6, on_arrival=False)
    assert control.reanchors > 0, "read when the chunk runs, the anchor moves with the wait"
