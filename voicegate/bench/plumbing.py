"""What the integrations themselves cost per call, in real time: ``python -m voicegate.bench.plumbing``.

One call at a time, for ``--secs`` seconds: the bot talks the whole time (espeak-ng's reading of the demo story, fed
as the framework's TTS would, far ahead of real time), the caller's microphone carries low noise, and the playout
clock runs on its own real-time task. Reported per second of call, as a fraction of one core:

- ``plumbing``: thread CPU in the integration's own code (the processors' frame handling and playout ticks, the
  LiveKit input tee and output chain) — voicegate's models are excluded;
- ``reflex``: voicegate's detectors for the same call (VAD, stop-phrase spotter, echo guard; no transcript here);
- ``process``: the whole process (the framework, the integration, voicegate, the stand-in caller and speaker).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import numpy as np

from voicegate.agent.demo import MONOLOGUE
from voicegate.tts.espeak import EspeakTts

MIC_FRAME = 320


def _mic(rng: np.random.Generator) -> np.ndarray:
    return rng.normal(0, 30, MIC_FRAME).astype(np.int16)


async def pipecat_call(secs: float, tick_ms: int) -> dict[str, Any]:
    """A real Pipecat pipeline [VoicegateInput, VoicegateOutput, sink], the bot talking throughout."""
    from pipecat.frames.frames import EndFrame, InputAudioRawFrame, TTSAudioRawFrame
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.runner import PipelineRunner
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker

    from voicegate.bench.peer_pipecat import _quiet_loguru
    from voicegate.integrations.pipecat import voicegate_processors

    _quiet_loguru()
    speech = await EspeakTts(sample_rate=24_000).synthesize(" ".join(MONOLOGUE))
    vg_in, vg_out = voicegate_processors(tick_ms=tick_ms)
    worker = PipelineWorker(Pipeline([vg_in, vg_out]), params=PipelineParams(audio_out_sample_rate=24_000),
                            idle_timeout_secs=None, enable_rtvi=False)
    run = asyncio.create_task(PipelineRunner(handle_sigint=False).run(worker))
    for _ in range(1200):  # the reflex loads its models in the pair's set-up
        if vg_out.reflex is not None:
            break
        await asyncio.sleep(0.05)
    assert vg_out.reflex is not None
    step = 24_000 * 40 // 1000
    await worker.queue_frames([TTSAudioRawFrame(audio=speech.pcm[i:i + step].tobytes(), sample_rate=24_000,
                                                num_channels=1) for i in range(0, len(speech.pcm), step)])
    rng = np.random.default_rng(0)
    plumbing0, reflex0 = vg_in.stats.plumbing_cpu_s, sum(vg_out.reflex.cpu_ms.values())
    cpu0, t0 = time.process_time(), time.monotonic()
    for k in range(int(secs * 50)):
        await asyncio.sleep(max(0.0, t0 + (k + 1) * 0.02 - time.monotonic()))
        await worker.queue_frame(InputAudioRawFrame(audio=_mic(rng).tobytes(), sample_rate=16_000, num_channels=1))
    wall = time.monotonic() - t0
    out = {"framework": "pipecat", "tick_ms": tick_ms, "secs": round(wall, 1),
           "plumbing": round((vg_in.stats.plumbing_cpu_s - plumbing0) / wall, 4),
           "reflex": round((sum(vg_out.reflex.cpu_ms.values()) - reflex0) / 1000 / wall, 4),
           "process": round((time.process_time() - cpu0) / wall, 4)}
    await worker.queue_frame(EndFrame())
    await asyncio.wait_for(run, 30)
    return out


async def livekit_call(secs: float, tick_ms: int) -> dict[str, Any]:
    """A real LiveKit ``AgentSession`` with voicegate attached, the bot talking throughout."""
    import logging

    from livekit import rtc
    from livekit.agents import Agent, AgentSession

    from voicegate.bench.peer_livekit import _input_class, _speaker_class
    from voicegate.integrations.livekit import VoicegateSession

    for name in ("livekit", "livekit.agents"):
        logging.getLogger(name).setLevel(logging.ERROR)
    speech = await EspeakTts(sample_rate=24_000).synthesize(" ".join(MONOLOGUE))
    session: Any = AgentSession(vad=None, aec_warmup_duration=None, turn_handling={"turn_detection": "manual"})
    speaker, mic = _speaker_class()(24_000), _input_class()()
    session.input.audio, session.output.audio = mic, speaker
    await session.start(Agent(instructions="plumbing"))
    gate = await VoicegateSession.attach(session, tick_ms=tick_ms, deliver_turns=False)

    async def audio() -> Any:
        for i in range(0, len(speech.pcm) - 480 + 1, 480):
            yield rtc.AudioFrame(data=speech.pcm[i:i + 480].tobytes(), sample_rate=24_000, num_channels=1,
                                 samples_per_channel=480)

    session.say("plumbing", audio=audio(), add_to_chat_ctx=False)
    rng = np.random.default_rng(0)
    await asyncio.sleep(0.5)
    plumbing0, reflex0 = gate.stats.plumbing_cpu_s, sum(gate.reflex.cpu_ms.values())
    cpu0, t0 = time.process_time(), time.monotonic()
    for k in range(int(secs * 50)):
        await asyncio.sleep(max(0.0, t0 + (k + 1) * 0.02 - time.monotonic()))
        speaker.next_frame()
        mic.chan.send_nowait(rtc.AudioFrame(data=_mic(rng).tobytes(), sample_rate=16_000, num_channels=1,
                                            samples_per_channel=MIC_FRAME))
    wall = time.monotonic() - t0
    out = {"framework": "livekit", "tick_ms": tick_ms, "secs": round(wall, 1),
           "plumbing": round((gate.stats.plumbing_cpu_s - plumbing0) / wall, 4),
           "reflex": round((sum(gate.reflex.cpu_ms.values()) - reflex0) / 1000 / wall, 4),
           "process": round((time.process_time() - cpu0) / wall, 4)}
    await gate.aclose()
    await session.aclose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="the integrations' own CPU per call, in real time")
    parser.add_argument("--secs", type=float, default=20.0)
    parser.add_argument("--frameworks", nargs="+", default=["pipecat", "livekit"])
    parser.add_argument("--ticks", nargs="+", type=int, default=[20, 40])
    args = parser.parse_args()
    for framework in args.frameworks:
        for tick_ms in args.ticks:
            call = pipecat_call if framework == "pipecat" else livekit_call
            print(json.dumps(asyncio.run(call(args.secs, tick_ms))), flush=True)


if __name__ == "__main__":
    main()
