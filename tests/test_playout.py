"""The outbound playout track: pacing, pts continuity, pause/resume position, clear, samples-played accounting."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from voicegate.config import PlayoutOptions
from voicegate.media.pacer import frame_pacer
from voicegate.media.playout import PlayoutTrack, UtteranceReport

RATE = 24_000
FRAME = 480


def ramp(n: int, start: int = 1) -> np.ndarray:
    """A signal whose value tells its own sample index (mod 30000), so positions can be read back."""
    return ((np.arange(n) + start) % 30000 + 1000).astype(np.int16)


class Recorder:
    def __init__(self) -> None:
        self.started: list[tuple[str, int]] = []
        self.finished: list[UtteranceReport] = []

    def on_utterance_started(self, utterance_id: str, at_samples: int) -> None:
        self.started.append((utterance_id, at_samples))

    def on_utterance_finished(self, report: UtteranceReport, at_samples: int) -> None:
        self.finished.append(report)


def make_track(fade_ms: float = 0.0) -> tuple[PlayoutTrack, Recorder]:
    rec = Recorder()
    return PlayoutTrack(PlayoutOptions(fade_ms=fade_ms), listener=rec), rec


async def test_recv_is_paced_with_continuous_pts_and_silence_when_idle() -> None:
    track, _ = make_track()
    t0 = time.monotonic()
    frames = [await track.recv() for _ in range(26)]
    elapsed = time.monotonic() - t0
    assert [f.pts for f in frames] == [i * FRAME for i in range(26)]
    assert all(f.sample_rate == RATE and f.samples == FRAME for f in frames)
    assert 0.45 <= elapsed <= 0.8, elapsed  # 25 frame intervals of 20 ms
    assert all(not f.to_ndarray().any() for f in frames)
    track.stop()


def test_plays_queue_in_order_and_reports_samples_played() -> None:
    track, rec = make_track()
    track.push(ramp(1000), "a")
    track.push(ramp(300, start=5000), "b")
    out = np.concatenate([track.next_frame() for _ in range(3)])
    assert np.array_equal(out[:1000], ramp(1000))
    assert np.array_equal(out[1000:1300], ramp(300, start=5000))
    assert not out[1300:].any()
    assert [u for u, _ in rec.started] == ["a", "b"]
    assert rec.started[1][1] == 1000
    assert [(r.utterance_id, r.played_samples, r.total_samples, r.interrupted) for r in rec.finished] == [
        ("a", 1000, 1000, False), ("b", 300, 300, False)]


def test_pause_sends_silence_and_resume_continues_from_exact_sample() -> None:
    track, _ = make_track(fade_ms=0.0)
    signal = ramp(FRAME * 10)
    track.push(signal, "u")
    first = track.next_frame()
    assert track.pause()
    assert not track.pause(), "pause is idempotent"
    # With no fade, the pause takes effect at the very next frame: only the one fade sample passes.
    during = [track.next_frame() for _ in range(5)]
    assert np.count_nonzero(np.concatenate(during)) <= 1
    assert track.queued_samples == len(signal) - FRAME - 1
    assert track.resume()
    after = track.next_frame()
    pos = FRAME + 1
    assert np.array_equal(after, signal[pos:pos + FRAME]), "resumes from the exact sample"
    assert np.array_equal(first, signal[:FRAME])


def test_pause_and_resume_fade_instead_of_clicking() -> None:
    track, _ = make_track(fade_ms=4.0)
    fade = int(RATE * 0.004)
    signal = np.full(FRAME * 10, 20000, np.int16)
    track.push(signal, "u")
    track.next_frame()
    track.pause()
    out = track.next_frame()
    assert np.all(np.diff(out[:fade].astype(int)) <= 0), "fade-out ramps down"
    assert not out[fade:].any()
    track.resume()
    back = track.next_frame()
    assert back[0] < 20000 * 2 / fade + 1 and back[fade - 1] == 20000, "fade-in ramps up"
    assert np.all(np.diff(back[:fade].astype(int)) >= 0)


def test_clear_drops_queue_bumps_generation_and_refuses_stale_push() -> None:
    track, _ = make_track()
    track.push(ramp(FRAME * 5), "a")
    track.push(ramp(FRAME * 5), "b")
    track.next_frame()
    gen = track.generation
    reports = track.clear()
    assert track.generation == gen + 1
    assert [(r.utterance_id, r.played_samples, r.interrupted) for r in reports] == [("a", FRAME, True), ("b", 0, True)]
    assert not track.next_frame().any(), "nothing stale plays after clear"
    assert not track.push(ramp(100), "stale", generation=gen), "a push for the old generation is refused"
    assert track.queued_samples == 0
    assert track.push(ramp(100), "fresh", generation=track.generation)
    assert track.next_frame()[:100].any()


def test_clear_while_paused_leaves_pause_and_plays_new_audio() -> None:
    track, _ = make_track()
    track.push(ramp(FRAME * 3), "a")
    track.next_frame()
    track.pause()
    track.clear()
    assert not track.paused
    track.push(ramp(FRAME), "b")
    assert track.next_frame().any()


def test_resume_rewind_replays_a_little_without_double_counting() -> None:
    track, rec = make_track()
    signal = ramp(FRAME * 4)
    track.push(signal, "u")
    track.next_frame()
    track.next_frame()
    track.pause()
    track.next_frame()
    track.resume(rewind_ms=10)
    out = track.next_frame()
    start = 2 * FRAME + 1 - RATE // 100
    assert np.array_equal(out, signal[start:start + FRAME])
    while track.queued_samples:
        track.next_frame()
    assert rec.finished[-1].played_samples == len(signal)


def test_recent_output_returns_what_was_sent() -> None:
    track, _ = make_track()
    track.push(ramp(FRAME * 2), "u")
    track.next_frame()
    track.next_frame()
    recent = track.recent_output(FRAME * 2)
    assert np.array_equal(recent, ramp(FRAME * 2))



async def test_a_48khz_track_is_encoded_frame_by_frame_without_a_frame_of_delay() -> None:
    """aiortc's Opus encoder resamples any rate but 48 kHz and holds part of every frame back, so each packet
    would carry mostly the previous 20 ms; WebRTC calls therefore play out at 48 kHz. Then every frame, the first
    too, is one packet at once, and a tone played in frame k is heard mostly in packet k (Opus delays by 6.5 ms)."""
    from aiortc.codecs.opus import OpusDecoder, OpusEncoder
    from aiortc.jitterbuffer import JitterFrame

    from voicegate.server.session import Session

    rate = Session.playout_sample_rate
    assert rate == 48_000
    frame_samples = rate // 50
    tone_at, frames = 5, 10
    t = np.arange(frame_samples) / rate
    speech = np.zeros(frame_samples * frames, np.int16)
    tone = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    speech[tone_at * frame_samples:(tone_at + 1) * frame_samples] = tone
    track = PlayoutTrack(PlayoutOptions(sample_rate=rate, fade_ms=0.0))
    track.push(speech, "u1")
    encoder, decoder = OpusEncoder(), OpusDecoder()
    energy = []
    for k in range(frames):
        frame = await track.recv()
        assert frame.sample_rate == rate and frame.samples == frame_samples and frame.pts == k * frame_samples
        payloads, _ = encoder.encode(frame)
        assert len(payloads) == 1, f"frame {k} gave {len(payloads)} packets"
        pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in decoder.decode(JitterFrame(payloads[0], 0))])
        energy.append(float(np.square(pcm.astype(np.float64)).sum()))
    assert int(np.argmax(energy)) == tone_at
    assert energy[tone_at] > 0.6 * sum(energy)


async def test_one_pacer_plays_every_socket_call_out_frame_by_frame_on_one_clock() -> None:
    """Three calls on the loop's pacer: each gets its audio sample-exact, one frame per 20 ms of the shared clock
    (the count over half a second is that of a per-call timer), silence once its queue is empty; a stopped track
    is dropped, a removed call gets no more frames, and the others go on."""
    pacer = frame_pacer()
    tracks = [make_track()[0] for _ in range(3)]
    received: list[list[np.ndarray]] = [[] for _ in tracks]
    for k, track in enumerate(tracks):
        track.push(ramp(FRAME * 10, start=k * 7000), "u", track.generation)
    paced = [pacer.add(track, received[k].append) for k, track in enumerate(tracks)]
    t0 = time.monotonic()
    await asyncio.sleep(0.5)
    counts = [len(r) for r in received]
    due = (time.monotonic() - t0) / 0.020  # one frame per 20 ms since the calls were added (however late the loop)
    assert all(due - 3 <= c <= due + 1 for c in counts), (counts, due)
    assert max(counts) - min(counts) <= 1, counts  # one clock for all
    for k, frames in enumerate(received):
        audio = np.concatenate(frames)
        assert np.array_equal(audio[:FRAME * 10], ramp(FRAME * 10, start=k * 7000)), "audio out of order or lost"
        assert not audio[FRAME * 10:].any(), "silence once the queue is empty"
    tracks[0].stop()
    pacer.remove(paced[1])
    await asyncio.sleep(0.1)
    after = [len(r) for r in received]
    assert after[0] <= counts[0] + 1 and after[1] <= counts[1] + 1
    assert after[2] >= counts[2] + 3
    assert time.monotonic() - t0 < 2.0
    pacer.remove(paced[2])
    for track in tracks:
        track.stop()
