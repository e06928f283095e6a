"""Transcript scheduling: the queue's rules, the live workers on the real Whisper engine, and the simulated queue
the benchmark uses (a request waits for the decodes before it)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from voicegate.asr.base import Transcript
from voicegate.asr.scheduler import AsrQueue, AsrRequest, AsrService, SimulatedAsr
from voicegate.asr.whisper import WhisperAsr
from voicegate.audio.pcm import load_audio
from voicegate.bench.asr_eval import words

Outcome = tuple[AsrRequest, Transcript | None, str | None]


def _req(call: str, segment: int, end: int, final: bool, sink: list[Outcome] | None = None,
         audio: np.ndarray | None = None) -> AsrRequest:
    def deliver(req: AsrRequest, transcript: Transcript | None, cause: str | None) -> None:
        if sink is not None:
            sink.append((req, transcript, cause))

    return AsrRequest(call, segment, end, final, np.zeros(160, np.int16) if audio is None else audio, deliver)


def test_a_newer_partial_supersedes_the_queued_one_and_a_final_drops_its_partial() -> None:
    q = AsrQueue(max_wait_ms=1000)
    first, second = _req("a", 1, 3200, False), _req("a", 1, 6400, False)
    assert q.submit(first) == []
    assert q.submit(second) == [(first, "superseded")]
    final = _req("a", 1, 8000, True)
    assert q.submit(final) == [(second, "superseded")], "the final covers the partial's audio and more"
    late_partial = _req("a", 1, 9000, False)
    assert q.submit(late_partial) == [(late_partial, "superseded")], "no partial behind a queued final"
    longer = _req("a", 1, 9600, True)
    assert q.submit(longer) == [(final, "superseded")], "a longer final of the same segment replaces it"
    assert len(q) == 1


def test_finals_first_round_robin_and_one_decode_per_call() -> None:
    q = AsrQueue(max_wait_ms=1000)
    a_partial, a_final = _req("a", 1, 100, False), _req("a", 2, 100, True)
    b_final, c_partial = _req("b", 1, 100, True), _req("c", 1, 100, False)
    for r in (a_partial, a_final, b_final, c_partial):
        q.submit(r)
    got, _ = q.take(0)
    assert got is a_final, "finals go before partials"
    got, _ = q.take(0)
    assert got is b_final, "then the next call's final, not the same call again"
    got, _ = q.take(0)
    assert got is c_partial, "call a already has a decode running"
    assert q.take(0)[0] is None
    q.done(a_final)
    assert q.take(0)[0] is a_partial


def test_requests_that_wait_too_long_expire_as_overloaded() -> None:
    q = AsrQueue(max_wait_ms=300)
    old = _req("a", 1, 100, True)
    old.requested_ms = 0
    fresh = _req("b", 1, 100, True)
    fresh.requested_ms = 250
    q.submit(old)
    q.submit(fresh)
    got, expired = q.take(400)
    assert got is fresh and expired == [(old, "overloaded")]
    assert q.drop_call("b") == [] and len(q) == 0


@pytest.fixture(scope="module")
def whisper() -> WhisperAsr:
    return WhisperAsr()


def test_live_workers_decode_every_call_once_and_report_the_rest(whisper: WhisperAsr, shared_data: Path) -> None:
    clips = [load_audio(p, 16_000) for p in sorted((shared_data / "speech/speech_commands/stop").glob("*.wav"))]
    service = AsrService(whisper, workers=2, max_wait_ms=10_000)
    results: list[Outcome] = []
    done = threading.Event()
    lock = threading.Lock()

    def deliver(req: AsrRequest, transcript: Transcript | None, cause: str | None) -> None:
        with lock:
            results.append((req, transcript, cause))
            if len(results) == 2 * len(clips):
                done.set()

    try:
        for i, clip in enumerate(clips):
            # Each call asks for a partial, then the final of the same segment at once: the queued partial is
            # superseded (unless a worker already took it), never decoded after its final.
            service.submit(AsrRequest(f"call-{i}", 1, len(clip) // 2, False, clip[: len(clip) // 2], deliver))
            service.submit(AsrRequest(f"call-{i}", 1, len(clip), True, clip, deliver))
        assert done.wait(60), f"only {len(results)} outcomes"
    finally:
        service.close()
    finals = [(r, t) for r, t, c in results if r.final]
    assert len(finals) == len(clips) and all(t is not None for _, t in finals), "every final decoded"
    partials = [(r, t, c) for r, t, c in results if not r.final]
    assert all(c in (None, "superseded") for _, _, c in partials)
    assert service.decodes == len(finals) + sum(t is not None for _, t, _ in partials), "no request decoded twice"
    heard = sum("stop" in words(t.text) for _, t in finals if t is not None)
    assert heard >= len(clips) // 2, [t.text for _, t in finals if t is not None]


def test_simulated_queue_makes_a_request_wait_for_the_one_before_it(whisper: WhisperAsr, shared_data: Path) -> None:
    clip = load_audio(sorted((shared_data / "speech/speech_commands/yes").glob("*.wav"))[0], 16_000)
    sim = SimulatedAsr(whisper, workers=1, max_wait_ms=10_000)
    seen: list[tuple[float, str, Transcript | None]] = []

    def deliver(req: AsrRequest, transcript: Transcript | None, cause: str | None) -> None:
        seen.append((sim.now_ms, req.call_id, transcript))

    sim.now_ms = 1000.0
    sim.submit(AsrRequest("a", 1, len(clip), True, clip, deliver))
    sim.submit(AsrRequest("b", 1, len(clip), True, clip, deliver))
    sim.advance(5000.0)
    (t_a, call_a, tr_a), (t_b, call_b, tr_b) = seen
    assert (call_a, call_b) == ("a", "b") and tr_a is not None and tr_b is not None
    assert t_a == pytest.approx(1000.0 + tr_a.compute_ms)
    assert t_b == pytest.approx(t_a + tr_b.compute_ms), "b started when a's decode ended"
