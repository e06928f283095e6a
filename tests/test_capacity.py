"""The cheaper call (issue 22): batched Silero, Opus decoded at 16 kHz, and the socket callers of ``voicegate load``."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import base_url
from voicegate.audio.pcm import load_audio, resample
from voicegate.audio.vad import WINDOW_SAMPLES, VadWindow
from voicegate.build import source_commit
from voicegate.client import Caller, ClipTrack
from voicegate.config import GateOptions
from voicegate.gate.detectors import DetectorThread, Job
from voicegate.gate.driver import GateModels, LiveGateDriver, StepResult
from voicegate.gate.reflex import ReflexGate
from voicegate.load import machine_cpus, run_load, summarize_rounds
from voicegate.media.inbound import DecodingJitterBuffer
from voicegate.media.opus import OpusDecoder
from voicegate.reflex import Reflex
from voicegate.server.app import SESSIONS

RECORDINGS = ("speech/asr_test_wavs/vosk-api_python_example_test.wav",
              "speech/asr_test_wavs/silero-vad_tests_data_test.wav",
              "speech/asr_test_wavs/silero-vad_files_en_num.wav")


def _streams(shared_data: Path) -> list[np.ndarray]:
    """Six 16 kHz streams: three recordings, each also delayed by a few windows and attenuated (other phases)."""
    clips = [load_audio(shared_data / name, 16_000)[: 16_000 * 12] for name in RECORDINGS]
    return clips + [np.concatenate([np.zeros(3 * WINDOW_SAMPLES + 100, np.int16), (c // 2).astype(np.int16)])
                    for c in clips]


def _decisions(results: list[StepResult]) -> list[tuple[object, ...]]:
    """Every window (probability, level, floor, verdict, event) and every spotted phrase of a call's chunks."""
    return [(w, tuple(r.hits)) for r in results for w in r.windows]


def _stepped_alone(pcm: np.ndarray, chunk: int, ticks: int) -> list[StepResult]:
    """One call's first ``ticks`` chunks through its own models, each window through Silero alone."""
    models = GateModels(GateOptions(), 16_000)
    return [models.step(pcm[i * chunk:(i + 1) * chunk], 200.0) for i in range(ticks)]


def test_batched_silero_gives_every_call_the_decisions_it_gets_alone(shared_data: Path) -> None:
    """Six calls' 20 ms chunks through one detector drain per tick (Silero batched across the calls), two ticks
    at a time for every other call (a backlog): every window's decision and every spotted phrase bit-identical to
    each call stepped alone, the calls' chunks in order, and the runs really shared."""
    streams = _streams(shared_data)
    chunk = 320
    ticks = min(len(s) for s in streams) // chunk - 1
    alone = [_decisions(_stepped_alone(pcm, chunk, ticks)) for pcm in streams]
    detectors = DetectorThread()
    calls = [GateModels(GateOptions(), 16_000) for _ in streams]
    batched: list[list[StepResult]] = [[] for _ in streams]
    for i in range(0, ticks, 2):
        jobs = []
        for k, (models, pcm) in enumerate(zip(calls, streams, strict=True)):
            for j in ((i, i + 1) if k % 2 else (i,)):
                jobs.append(Job(models, pcm[j * chunk:(j + 1) * chunk], 200.0, None, None))
        for job, result, exc in detectors.drain(jobs):
            assert exc is None and result is not None
            batched[calls.index(job.models)].append(result)
        for k in range(0, len(streams), 2):  # the even calls catch up on their second chunk alone
            (_, result, _), = detectors.drain([Job(calls[k], streams[k][(i + 1) * chunk:(i + 2) * chunk], 200.0,
                                                   None, None)])
            assert result is not None
            batched[k].append(result)
    assert [_decisions(b) for b in batched] == alone, "a batched call decided differently from the call alone"
    windows = sum(len(a) for a in alone)
    assert detectors.windows == windows
    assert detectors.runs < 0.6 * windows, (detectors.runs, windows)
    assert sum(w.prob >= 0.5 for a in alone for w, _ in a) > 50, "the recordings hold speech"


async def test_detector_thread_delivers_each_calls_chunks_in_order_on_its_loop(shared_data: Path) -> None:
    """Chunks submitted from the loop (several calls, several chunks each at once) come back on the loop, in each
    call's order, with the same decisions as the calls stepped alone; a failing step reaches only its own call."""
    loop = asyncio.get_running_loop()
    streams = _streams(shared_data)[:3]
    chunk, ticks = 320, 150
    alone = [_decisions(_stepped_alone(pcm, chunk, ticks)) for pcm in streams]
    detectors = DetectorThread()
    calls = [GateModels(GateOptions(), 16_000) for _ in streams]
    broken = GateModels(GateOptions(), 16_000)
    broken.kws = None  # type: ignore[assignment]  # a detector that fails on every chunk
    got: list[list[StepResult]] = [[] for _ in streams]
    threads: set[str] = set()
    failures: list[BaseException] = []
    finished = asyncio.Event()

    def keep(k: int) -> Callable[[StepResult | None, BaseException | None], None]:
        def deliver(result: StepResult | None, exc: BaseException | None) -> None:
            threads.add(threading.current_thread().name)
            if exc is not None:
                failures.append(exc)
            else:
                assert result is not None
                got[k].append(result)
            if sum(len(g) for g in got) == len(streams) * ticks and len(failures) == ticks // 5:
                finished.set()
        return deliver

    for i in range(0, ticks, 5):
        for k, (models, pcm) in enumerate(zip(calls, streams, strict=True)):
            for j in range(i, i + 5):
                detectors.submit(Job(models, pcm[j * chunk:(j + 1) * chunk], 200.0, loop, keep(k)))
        detectors.submit(Job(broken, streams[0][:chunk], 200.0, loop, keep(0)))
        await asyncio.sleep(0.01)
    await asyncio.wait_for(finished.wait(), 30)
    assert threads == {threading.current_thread().name}, "results must land on the loop's thread"
    assert [_decisions(g) for g in got] == alone
    assert len(failures) == ticks // 5


def test_every_chunks_windows_go_out_before_the_spotter_runs(shared_data: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """One drain of six calls' speech chunks: every chunk's VAD windows are handed to its loop before the keyword
    spotter runs on any of them (a pause never waits for PocketSphinx on another call's speech); a chunk that comes
    while the spotter works gets its windows before the spotter's remaining work; each chunk's whole result (hits
    added) follows its windows, and both carry the same windows as the call stepped alone."""
    streams = _streams(shared_data)
    chunk, at = 320, 60  # a chunk index where every stream holds speech (checked below)
    events: list[tuple[str, int]] = []
    calls = [GateModels(GateOptions(), 16_000) for _ in range(len(streams) + 1)]
    for k, models in enumerate(calls):
        feed = models.kws.feed

        def spot(pcm: np.ndarray, k: int = k, feed: Callable[[np.ndarray], list[object]] = feed) -> list[object]:
            events.append(("kws", k))
            return feed(pcm)
        models.kws.feed = spot  # type: ignore[method-assign,assignment]

    def handed(items: list[tuple[Job, StepResult | None, BaseException | None, bool]],
               ack: bool = False) -> list[threading.Event]:
        for job, result, exc, early in items:
            assert exc is None and result is not None
            events.append(("windows" if early else "result", calls.index(job.models)))
        return []

    monkeypatch.setattr(DetectorThread, "deliver", staticmethod(handed))
    pcm_of = [streams[k % len(streams)] for k in range(len(calls))]
    for i in range(at):  # the calls' history, so that their state is mid-speech
        for models, pcm in zip(calls, pcm_of, strict=True):
            models.step(pcm[i * chunk:(i + 1) * chunk], 200.0)
    events.clear()
    def job(k: int) -> Job:
        return Job(calls[k], pcm_of[k][at * chunk:(at + 1) * chunk], 200.0, None, lambda r, e: None,
                   early=lambda r: None)

    late = [job(len(streams))]
    polls = 0

    def arrived() -> list[Job]:
        nonlocal polls
        polls += 1
        return late if polls == 2 else []  # after the first call's spotting

    detectors = DetectorThread()
    finished = detectors.drain([job(k) for k in range(len(streams))], arrived)
    n = len(streams)
    assert [e for e, _ in events[:n]] == ["windows"] * n, events
    assert events[n] == ("kws", 0) and events[n + 1] == ("result", 0), events
    assert events[n + 2] == ("windows", n), "the late chunk's windows must come before the spotter's remaining work"
    assert events.count(("kws", n)) == 1 and events.index(("kws", n)) > events.index(("kws", n - 1))
    for k in range(n + 1):
        assert events.index(("windows", k)) < events.index(("kws", k)) < events.index(("result", k))
    alone = [GateModels(GateOptions(), 16_000) for _ in calls]
    for k, models in enumerate(alone):
        for i in range(at):
            models.step(pcm_of[k][i * chunk:(i + 1) * chunk], 200.0)
    expected = [models.step(pcm_of[k][at * chunk:(at + 1) * chunk], 200.0) for k, models in enumerate(alone)]
    got = {calls.index(j.models): r for j, r, _ in finished}
    assert len(got) == n + 1
    assert all(got[k].windows == expected[k].windows and got[k].hits == expected[k].hits for k in range(n + 1))
    assert sum(w.prob >= 0.5 for r in expected for w in r.windows) >= 3, "the chunks hold speech"


def test_opus_decoded_at_16k_matches_the_48k_decode_resampled(shared_data: Path) -> None:
    """What the server now does (libopus at 16 kHz mono) against what aiortc did (48 kHz stereo, resampled)."""
    for name in RECORDINGS:
        clip = load_audio(shared_data / name, 48_000)[: 48_000 * 6]
        encoder = av.CodecContext.create("libopus", "w")
        encoder.bit_rate, encoder.format, encoder.layout, encoder.sample_rate = 96_000, "s16", "stereo", 48_000
        reference = av.CodecContext.create("libopus", "r")
        reference.format, reference.layout, reference.sample_rate = "s16", "stereo", 48_000
        ours = OpusDecoder(16_000)
        direct, via48 = [], []
        for i in range(0, len(clip) - 960 + 1, 960):
            frame = av.AudioFrame.from_ndarray(np.repeat(clip[i:i + 960], 2).reshape(1, -1), format="s16",
                                               layout="stereo")
            frame.sample_rate, frame.pts = 48_000, i
            for packet in encoder.encode(frame):
                data = bytes(packet)
                pcm = ours.decode(data)
                assert len(pcm) == 320
                direct.append(pcm)
                for out in reference.decode(av.Packet(data)):
                    via48.append(out.to_ndarray().reshape(-1, 2)[:, 0].copy())
        ours.close()
        a = np.concatenate(direct).astype(np.float64)
        b = resample(np.concatenate(via48), 48_000, 16_000).astype(np.float64)
        n = min(len(a), len(b)) - 64
        lags = range(-8, 9)
        corr = max(float(np.corrcoef(a[32 + lag:32 + lag + n - 32], b[32:n])[0, 1]) for lag in lags)
        assert corr > 0.95, (name, corr)
        assert 0.8 < np.sqrt(np.mean(a ** 2)) / np.sqrt(np.mean(b ** 2)) < 1.25


def test_opus_decoder_conceals_a_lost_packet_and_rejects_garbage() -> None:
    decoder = OpusDecoder(16_000)
    assert len(decoder.decode(b"")) == 320
    with pytest.raises(ValueError, match="opus_decode failed"):
        decoder.decode(b"\xff")
    decoder.close()
    decoder.close()


async def test_webrtc_opus_is_decoded_at_16k_as_it_arrives_and_encoded_mono(server: TestServer,
                                                                             shared_data: Path) -> None:
    """Both directions of a real aiortc call go through libopus: the caller's audio arrives whole and as loud as it
    was sent, and the bot's voice (Opus packets made here, mono) is heard by the caller."""
    clip = load_audio(shared_data / RECORDINGS[0], 48_000)[: 48_000 * 2]
    caller = Caller(base_url(server), ClipTrack(clip, delay_secs=0.2))
    await caller.connect()
    try:
        session = server.app[SESSIONS][caller.call_id]
        import asyncio

        for _ in range(100):
            if caller.mic._pos >= len(clip) and session.inbound is not None \
                    and session.inbound.received_samples >= caller.mic.sent_frames * 320 - 640:
                break
            await asyncio.sleep(0.05)
        buffers = [r._RTCRtpReceiver__jitter_buffer for r in session.pc.getReceivers()]
        decoding = [b for b in buffers if isinstance(b, DecodingJitterBuffer)]
        assert decoding and decoding[0].decode_errors == 0
        assert session.inbound is not None
        assert abs(session.inbound.received_samples - caller.mic.sent_frames * 320) <= 4 * 320
        sent_rms = float(np.sqrt(np.sum(clip.astype(np.float64) ** 2) / (caller.mic.sent_frames * 960)))
        assert 0.6 * sent_rms < session.inbound_rms < 1.5 * sent_rms, (session.inbound_rms, sent_rms)
        assert session.outbound.opus, "Opus was negotiated: the server encodes the bot's voice itself"
        await caller.wait_event("bot.speaking")
        await asyncio.sleep(1.0)
        assert caller.bot_rms(last_frames=25) > 200, "the caller hears the bot's voice"
    finally:
        await caller.close()


@pytest.mark.parametrize("transport", ["ws", "twilio"])
async def test_load_with_socket_callers_times_pauses_on_the_caller_side(transport: str) -> None:
    """`voicegate load --transport ws|twilio` against a real server: every call connects, the phrases said over the
    bot pause it (timed by the callers), and the callers cost far less than the server."""
    result = await run_load(3, 9.0, workers=1, transport=transport)
    assert result["transport"] == transport
    assert result["server_commits"] == [source_commit()], "the server ran this checkout's code"
    assert result["failed_calls"] == 0
    assert result["phrases"] >= 6
    assert result["caller_pauses"] >= 0.5 * result["phrases"], result
    assert 20 < result["caller_pause_ms_p50"] < 400, result
    if transport == "ws":  # the bot's voice ends by the first whole silent frame; bot.paused is heard
        # Equal for a pause that finds the bot between words (nothing left to fade): CI once drew a median of those
        # (72.3 ms both); the fade's own 16 ms is checked on synthetic frames below.
        assert 0 < result["caller_voice_end_ms_p50"] <= result["caller_pause_ms_p50"], result
        assert 0 < result["caller_paused_event_ms_p50"] < 400, result
    assert result["callers_cpu_percent_of_one_core"] < 0.5 * result["server_cpu_percent_of_one_core"], result
    # The machine's idle share leaves room for what the server and the callers were measured to run.
    ran = result["server_cpu_percent_of_one_core"] + result["callers_cpu_percent_of_one_core"]
    measured_busy = ran / machine_cpus()
    assert 0 <= result["machine_idle_percent"] <= 100 - measured_busy + 5, result


def test_ws_caller_times_the_first_silent_frame_the_voice_end_and_the_event() -> None:
    """A ``/ws`` caller's three yardsticks on frames as they arrive: loud frames, the pause's fade frame (4 ms
    audible), then silence; ``bot.paused`` arrives between them."""
    from voicegate.load_socket import SocketCaller

    caller = SocketCaller("", "ws")
    onset = 10.0
    frames = [(onset - 0.1 + 0.02 * k, 3000.0, 0.02) for k in range(8)]  # the bot talks through the onset
    frames.append((onset + 0.06, 700.0, 0.004))  # the fade: 4 ms of voice
    frames += [(onset + 0.08 + 0.02 * k, 0.0, 0.0) for k in range(6)]
    caller.levels, caller.onsets = frames, [onset]
    caller.events = [{"type": "bot.paused", "_received": onset + 0.045}]
    assert caller.pauses_ms() == [80.0]
    assert caller.voice_end_ms() == [64.0]
    assert caller.paused_event_ms() == [45.0]
    caller.events = []  # the server never said it paused: the phrase is not counted by any of them
    assert caller.pauses_ms() == caller.voice_end_ms() == caller.paused_event_ms() == []


def test_rounds_are_summarized_as_median_and_spread() -> None:
    """`voicegate load --rounds N`: each figure's median, lowest and highest; a figure no round measured is None."""
    base = {"calls": 4, "transport": "ws", "mode": "quiet", "workers": 2, "failed_calls": 0,
            "server_cpu_percent_of_one_core": 20.0, "callers_cpu_percent_of_one_core": 3.0,
            "machine_idle_percent": 88.0, "frames_late_over_20ms": 0.0, "caller_pause_ms_p50": None,
            "caller_pause_ms_p95": None}
    rounds = [{**base, "per_call_cpu_percent": v} for v in (7.2, 4.6, 4.9)]
    rounds[1]["failed_calls"] = 1
    summary = summarize_rounds(rounds)
    assert summary["summary"] is True and summary["rounds"] == 3 and summary["failed_calls"] == 1
    assert summary["per_call_cpu_percent"] == {"median": 4.9, "min": 4.6, "max": 7.2}
    assert summary["caller_pause_ms_p95"] is None
    with pytest.raises(ValueError):
        summarize_rounds([])


@pytest.mark.parametrize(("rate", "encoding", "playout_rate", "frame_bytes"),
                         [(16_000, "pcm16", 16_000, 640), (48_000, "pcm16", 48_000, 1920),
                          (8000, "mulaw", 24_000, 160)])
async def test_ws_call_plays_out_at_the_clients_rate(server: TestServer, rate: int, encoding: str,
                                                      playout_rate: int, frame_bytes: int) -> None:
    """A /ws client at 16, 24 or 48 kHz gets the bot's frames made at its own rate (no resampler per frame)."""
    import asyncio
    import json

    import aiohttp

    url = base_url(server).replace("http://", "ws://") + "/ws"
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        await ws.send_str(json.dumps({"type": "start", "sample_rate": rate, "encoding": encoding}))
        sizes: list[int] = []
        loud = 0
        silence = bytes(frame_bytes)
        async with asyncio.timeout(10):
            while len(sizes) < 60:
                await ws.send_bytes(silence)
                message = await ws.receive()
                if message.type == aiohttp.WSMsgType.BINARY:
                    sizes.append(len(message.data))
                    if encoding == "pcm16":
                        loud += int(np.abs(np.frombuffer(message.data, "<i2")).max() > 1000)
        calls = list(server.app[SESSIONS].values())
        assert len(calls) == 1 and calls[0].playout.sample_rate == playout_rate
        assert set(sizes) == {frame_bytes}
        assert encoding != "pcm16" or loud > 5, "the bot's greeting is heard"
        await ws.send_str(json.dumps({"type": "stop"}))


async def test_quiet_chunks_wait_for_the_detector_tick_and_speech_runs_at_once(shared_data: Path) -> None:
    """A live reflex: chunks of digital silence return before their results land (they wait for the thread's next
    tick, shared with other calls; the idle tick while the gate has nothing in progress); the first chunk at speech
    level runs at once and, when it returns, every chunk before it has been applied, in order; the windows the gate
    saw are those of the models stepped alone."""
    reflex = Reflex(bot_sample_rate=16_000)
    await reflex.start()
    driver = reflex.driver
    assert isinstance(driver, LiveGateDriver)
    seen: list[VadWindow] = []
    on_window = driver.gate.on_window

    def record(window: VadWindow, t_ms: float) -> None:
        seen.append(window)
        on_window(window, t_ms)

    driver.gate.on_window = record  # type: ignore[method-assign]
    kinds: list[tuple[bool, bool, bool]] = []
    submit = driver.detectors.submit

    def classify(job: Job) -> None:
        assert isinstance(driver.gate, ReflexGate)
        kinds.append((job.urgent, job.idle, driver.gate.idle))
        submit(job)

    driver.detectors.submit = classify  # type: ignore[method-assign]
    speech = load_audio(shared_data / RECORDINGS[0], 16_000)[: 16_000 * 3]
    chunks = [np.zeros(320, np.int16) for _ in range(40)] + [speech[i:i + 320] for i in range(0, len(speech), 320)]
    quiet_returned_early = at_once = 0
    for i, chunk in enumerate(chunks):
        await reflex.feed_user(chunk, 16_000)
        if i < 40:
            assert not driver.ran_at_once, "digital silence cannot start speech"
            quiet_returned_early += driver.applied_chunks <= i
            await asyncio.sleep(0.002)
        elif driver.ran_at_once:  # when it returns, it and every chunk before it have been applied
            assert driver.applied_chunks == i + 1
            at_once += 1
    assert quiet_returned_early >= 35, quiet_returned_early
    assert all(idle for _, idle, _ in kinds[:40]), "silence with nothing in progress waits for the idle tick"
    assert all(not idle for urgent, idle, gate_idle in kinds if urgent or not gate_idle), \
        "a chunk that could be speech, or one while the gate has something in progress, is not idle"
    assert sum(not gate_idle for _, _, gate_idle in kinds) > 20, "the speech opened a segment"
    for _ in range(100):
        if driver.applied_chunks == len(chunks):
            break
        await asyncio.sleep(0.01)
    assert driver.applied_chunks == len(chunks)
    alone = GateModels(GateOptions(), 16_000)
    expected = [w for c in chunks for w in alone.step(c, driver.gate.hangover_ms).windows]
    assert [(w.end_samples, w.prob, w.voiced) for w in seen] == [(w.end_samples, w.prob, w.voiced) for w in expected]
    assert any(w.voiced for w in seen), "the recording holds speech"
    assert at_once >= 0.5 * (len(chunks) - 40), at_once
    reflex.close()


async def test_an_idle_calls_chunks_wait_for_the_idle_tick_and_speech_takes_only_its_own_backlog(
        shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two idle calls' quiet chunks (``Job.idle``) run a few at a time, at the idle tick, not one drain per 20 ms
    chunk; a chunk of one call that could be speech runs at once with that call's backlog before it, in order, and
    leaves the other call's chunks for their tick; every result lands in order, equal to the call stepped alone."""
    loop = asyncio.get_running_loop()
    speech = load_audio(shared_data / RECORDINGS[0], 16_000)
    chunk, quiet_chunks = 320, 25
    pcm = [np.concatenate([np.zeros(chunk * quiet_chunks, np.int16), speech[:chunk]]) for _ in range(2)]
    detectors = DetectorThread(tick_ms=20, idle_tick_ms=200)
    drains: list[list[int]] = []
    drain = detectors.drain

    def record(jobs: list[Job], arrived: Callable[[], list[Job]] | None = None) -> list[tuple[Job, StepResult | None,
                                                                                         BaseException | None]]:
        drains.append([calls.index(job.models) for job in jobs])
        return drain(jobs, arrived)

    monkeypatch.setattr(detectors, "drain", record)
    calls = [GateModels(GateOptions(), 16_000) for _ in pcm]
    got: list[list[StepResult]] = [[], []]
    spoke = asyncio.Event()

    def keep(k: int, last: bool) -> Callable[[StepResult | None, BaseException | None], None]:
        def deliver(result: StepResult | None, exc: BaseException | None) -> None:
            assert exc is None and result is not None
            got[k].append(result)
            if last:
                spoke.set()
        return deliver

    began = loop.time()
    for i in range(quiet_chunks):
        for k, models in enumerate(calls):
            detectors.submit(Job(models, pcm[k][i * chunk:(i + 1) * chunk], 200.0, loop, keep(k, False),
                                 urgent=False, idle=True))
        await asyncio.sleep(0.02)
    idle_drains, ticks = len(drains), (loop.time() - began) / 0.2
    # Call 1's chunk is queued just before call 0's speech: it waits for its tick.
    detectors.submit(Job(calls[1], pcm[1][quiet_chunks * chunk:], 200.0, loop, keep(1, False), urgent=False,
                         idle=True))
    detectors.submit(Job(calls[0], pcm[0][quiet_chunks * chunk:], 200.0, loop, keep(0, True)))
    await asyncio.wait_for(spoke.wait(), 10)
    assert drains[idle_drains] == [0] * (len(drains[idle_drains])), "speech must not wait for another call's chunks"
    assert len(got[0]) == quiet_chunks + 1, "the speaking call's backlog is applied before its speech"
    for _ in range(100):
        if len(got[1]) == quiet_chunks + 1:
            break
        await asyncio.sleep(0.01)
    # One drain per idle tick that passed (however slow this machine's 20 ms sleeps), not one per chunk.
    assert 0 < idle_drains <= min(ticks + 2, quiet_chunks - 1), \
        f"{quiet_chunks} chunks of idle calls over {ticks:.1f} ticks took {idle_drains} drains"
    for k in range(2):
        alone = _stepped_alone(pcm[k], chunk, quiet_chunks + 1)
        assert _decisions(got[k]) == _decisions(alone)
