"""A Pipecat 1.14 voice bot with voicegate's barge-in, runnable offline: no cloud keys, no internet.

    pip install -e '.[peers]'                # voicegate + pipecat-ai==1.14.0 (make peers)
    python examples/pipecat/bot.py           # then open http://127.0.0.1:7860 and allow the microphone

Transport: Pipecat's own ``SmallWebRTCTransport`` (aiortc, peer to peer: the browser's offer is POSTed to
``/offer``). TTS: espeak-ng through a 20-line Pipecat ``TTSService``. LLM: any OpenAI-compatible endpoint when
``OPENAI_BASE_URL`` is set (a local llama.cpp / vLLM / Ollama server works; ``OPENAI_API_KEY`` and ``OPENAI_MODEL``
as it needs), otherwise voicegate's demo agent (it reads a story and, after an interruption, answers "Okay, I
stopped. You said: …").

The voicegate part is the two processors and the user aggregator's strategies (marked ``# voicegate``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from aiohttp import web
from pipecat.frames.frames import (
    Frame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSSpeakFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.runner import PipelineRunner
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair, LLMUserAggregatorParams
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TTSService
from pipecat.transports.base_transport import TransportParams
from pipecat.transports.smallwebrtc.connection import SmallWebRTCConnection
from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport

from voicegate.agent.demo import GREETING, MONOLOGUE
from voicegate.integrations.pipecat import voicegate_processors, voicegate_turn_strategies
from voicegate.tts.espeak import EspeakTts

PAGE = """<!doctype html><meta charset=utf-8><title>Pipecat + voicegate</title>
<button id=go>Talk to the bot</button> <span id=state></span><audio id=out autoplay></audio>
<script>
go.onclick = async () => {
  const pc = new RTCPeerConnection();
  const mic = await navigator.mediaDevices.getUserMedia({audio: {echoCancellation: true}});
  mic.getTracks().forEach(t => pc.addTrack(t, mic));
  pc.addTransceiver("video", {direction: "recvonly"});
  pc.ontrack = e => { if (e.track.kind === "audio") out.srcObject = new MediaStream([e.track]); };
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise(r => pc.iceGatheringState === "complete" ? r() :
    pc.addEventListener("icegatheringstatechange", () => pc.iceGatheringState === "complete" && r()));
  const res = await fetch("/offer", {method: "POST", headers: {"Content-Type": "application/json"},
                                      body: JSON.stringify({sdp: pc.localDescription.sdp, type: "offer"})});
  await pc.setRemoteDescription(await res.json());
  state.textContent = "connected: interrupt it any time";
};
</script>"""


class EspeakTTSService(TTSService):  # type: ignore[misc]
    """espeak-ng (offline) as a Pipecat TTS service."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(push_start_frame=True, push_stop_frames=True,
                         settings=TTSSettings(model=None, voice="espeak-ng", language=None), **kwargs)
        self._espeak = EspeakTts()

    def can_generate_metrics(self) -> bool:
        return False

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame, None]:
        speech = await self._espeak.synthesize(text)

        async def chunks() -> AsyncIterator[bytes]:
            yield speech.pcm.tobytes()

        async for frame in self._stream_audio_frames_from_iterator(chunks(), in_sample_rate=speech.sample_rate,
                                                                   context_id=context_id):
            yield frame


class DemoLLM(FrameProcessor):  # type: ignore[misc]
    """voicegate's demo agent in Pipecat's place of an LLM: answers each user turn with a fixed reply."""

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMContextFrame):
            users = [m for m in frame.context.get_messages() if m.get("role") == "user"]
            said = str(users[-1].get("content", "")) if users else ""
            await self.push_frame(LLMFullResponseStartFrame())
            await self.push_frame(LLMTextFrame(f"Okay, I stopped. You said: {said}"))
            await self.push_frame(LLMFullResponseEndFrame())
        else:
            await self.push_frame(frame, direction)


def make_llm() -> FrameProcessor:
    """An OpenAI-compatible endpoint when ``OPENAI_BASE_URL`` is set, else the demo agent."""
    base_url = os.environ.get("OPENAI_BASE_URL")
    if not base_url:
        return DemoLLM()
    from pipecat.services.openai.llm import OpenAILLMService

    return OpenAILLMService(api_key=os.environ.get("OPENAI_API_KEY", "not-needed"), base_url=base_url,
                            settings=OpenAILLMService.Settings(model=os.environ.get("OPENAI_MODEL", "gpt-4o-mini")))


async def run_bot(connection: SmallWebRTCConnection) -> None:
    """One call: the pipeline, with voicegate's two processors around the agent."""
    transport = SmallWebRTCTransport(webrtc_connection=connection,
                                     params=TransportParams(audio_in_enabled=True, audio_out_enabled=True))
    context = LLMContext([{"role": "system", "content": "You are a friendly voice assistant. Answer briefly."}])
    aggregators = LLMContextAggregatorPair(context, user_params=LLMUserAggregatorParams(
        user_turn_strategies=voicegate_turn_strategies()))                   # voicegate: it decides the turns
    vg_in, vg_out = voicegate_processors()                                   # voicegate
    pipeline = Pipeline([transport.input(), vg_in, aggregators.user(), make_llm(), EspeakTTSService(),
                         vg_out, transport.output(), aggregators.assistant()])
    worker = PipelineWorker(pipeline, params=PipelineParams(audio_out_sample_rate=24_000), enable_rtvi=False)

    @transport.event_handler("on_client_connected")
    async def greet(_transport: Any, _client: Any) -> None:
        await worker.queue_frames([TTSSpeakFrame(GREETING), *(TTSSpeakFrame(s) for s in MONOLOGUE[:6])])

    @transport.event_handler("on_client_disconnected")
    async def bye(_transport: Any, _client: Any) -> None:
        await worker.cancel()

    await PipelineRunner(handle_sigint=False).run(worker)


def make_app() -> web.Application:
    """``GET /`` (a minimal page) and ``POST /offer`` (one bot per offer)."""
    calls: set[asyncio.Task[None]] = set()

    async def page(_request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    async def offer(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            sdp, kind = str(body["sdp"]), str(body.get("type", "offer"))
        except Exception:
            return web.json_response({"error": "bad_offer", "message": "send {sdp, type} as JSON"}, status=400)
        connection = SmallWebRTCConnection()
        await connection.initialize(sdp=sdp, type=kind)
        task = asyncio.create_task(run_bot(connection), name="pipecat-bot")
        calls.add(task)
        task.add_done_callback(calls.discard)
        answer = dict(connection.get_answer())
        answer["call_id"] = answer.get("pc_id", "")
        return web.json_response(answer)

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_post("/offer", offer)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    args = parser.parse_args()
    web.run_app(make_app(), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
