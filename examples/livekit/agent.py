"""A LiveKit Agents 1.8.9 voice agent with voicegate's barge-in.

    pip install -e '.[peers]'                       # voicegate + livekit-agents==1.8.9 (make peers)
    python examples/livekit/agent.py check          # no server, no audio device: see voicegate hold and release
    python examples/livekit/agent.py console        # your microphone and speakers, no LiveKit server
    python examples/livekit/agent.py dev            # a LiveKit server: LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET

No cloud keys: TTS is espeak-ng (a small LiveKit ``tts.TTS``); the LLM is any OpenAI-compatible endpoint when
``OPENAI_BASE_URL`` is set and ``livekit-plugins-openai`` is installed, otherwise voicegate's demo answer
("Okay, I stopped. You said: …"). The voicegate part is ``vad=None``, manual turns and one line:
``await VoicegateSession.attach(session)``.

``check`` runs a real ``AgentSession`` with voicegate attached between LiveKit's output chain and a null
loudspeaker, says the greeting, plays a recording of "yes" into the microphone while the bot talks (the bot is held,
then resumes from the same sample), then a "stop" (LiveKit's own interruption), and prints what happened.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from livekit.agents import Agent, AgentSession, JobContext, WorkerOptions, cli, llm, tts
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS

from voicegate.agent.demo import GREETING, MONOLOGUE
from voicegate.integrations.livekit import VoicegateSession
from voicegate.tts.espeak import EspeakTts

SHARED_COMMANDS = Path(__file__).resolve().parents[3] / "shared/data/speech/speech_commands"
INSTRUCTIONS = "You are a friendly voice assistant. Answer in one or two short sentences."


class EspeakTTS(tts.TTS):  # type: ignore[misc]
    """espeak-ng (offline) as a LiveKit TTS."""

    def __init__(self) -> None:
        super().__init__(capabilities=tts.TTSCapabilities(streaming=False), sample_rate=22_050, num_channels=1)
        self.espeak = EspeakTts()

    def synthesize(self, text: str, *, conn_options: Any = DEFAULT_API_CONNECT_OPTIONS) -> tts.ChunkedStream:
        return _EspeakStream(tts=self, input_text=text, conn_options=conn_options)


class _EspeakStream(tts.ChunkedStream):  # type: ignore[misc]
    async def _run(self, output_emitter: Any) -> None:
        speech = await self._tts.espeak.synthesize(self.input_text)
        output_emitter.initialize(request_id="espeak", sample_rate=speech.sample_rate, num_channels=1,
                                  mime_type="audio/pcm")
        output_emitter.push(speech.pcm.tobytes())
        output_emitter.flush()


class _DemoStream(llm.LLMStream):  # type: ignore[misc]
    async def _run(self) -> None:
        users = [m for m in self._chat_ctx.items if getattr(m, "role", None) == "user"]
        said = users[-1].text_content if users else ""
        self._event_ch.send_nowait(llm.ChatChunk(id="demo", delta=llm.ChoiceDelta(
            role="assistant", content=f"Okay, I stopped. You said: {said}")))


class DemoLLM(llm.LLM):  # type: ignore[misc]
    """voicegate's demo agent in place of an LLM."""

    def chat(self, *, chat_ctx: Any, tools: Any = None, conn_options: Any = DEFAULT_API_CONNECT_OPTIONS,
             **_kwargs: Any) -> llm.LLMStream:
        return _DemoStream(self, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options)


def make_llm() -> Any:
    """An OpenAI-compatible endpoint when configured (``OPENAI_BASE_URL``), else the demo answer."""
    if os.environ.get("OPENAI_BASE_URL"):
        try:
            from livekit.plugins import openai as lk_openai
        except ImportError:
            print("OPENAI_BASE_URL is set but livekit-plugins-openai is not installed: using the demo answer")
        else:
            return lk_openai.LLM(base_url=os.environ["OPENAI_BASE_URL"],
                                 api_key=os.environ.get("OPENAI_API_KEY", "not-needed"),
                                 model=os.environ.get("OPENAI_MODEL", "gpt-4o-mini"))
    return DemoLLM()


def make_session() -> AgentSession:
    """LiveKit's own barge-in off (no VAD, manual turns): voicegate decides."""
    return AgentSession(llm=make_llm(), tts=EspeakTTS(), vad=None, turn_handling={"turn_detection": "manual"})


async def entrypoint(ctx: JobContext) -> None:
    """One call in a LiveKit room."""
    session = make_session()
    await session.start(Agent(instructions=INSTRUCTIONS), room=ctx.room)
    await VoicegateSession.attach(session)                               # voicegate: the one line
    session.say(" ".join((GREETING, *MONOLOGUE[:6])))


async def check() -> int:
    """A real session, a null loudspeaker, two recordings: no server, no audio device."""
    import numpy as np

    from voicegate.audio.pcm import load_audio
    from voicegate.bench.peer_livekit import MIC_FRAME, _input_class, _speaker_class

    commands = SHARED_COMMANDS
    if not commands.is_dir():
        print(f"{commands} is absent: check needs the project's shared recordings")
        return 2
    yes = load_audio(sorted((commands / "yes").glob("*.wav"))[6], 16_000)
    stop = load_audio(sorted((commands / "stop").glob("*.wav"))[7], 16_000)
    mic_audio = np.zeros(16_000 * 9, np.int16)
    mic_audio[32_000:32_000 + len(yes)] = yes
    mic_audio[96_000:96_000 + len(stop)] = stop

    from livekit import rtc

    session = make_session()
    speaker, mic = _speaker_class()(22_050), _input_class()()
    session.input.audio, session.output.audio = mic, speaker
    await session.start(Agent(instructions=INSTRUCTIONS))
    gate = await VoicegateSession.attach(session, clock=False)           # the bench's clock drives it here
    gate.reflex.add_listener(lambda e: e["type"].startswith(("bot.", "gate.")) and print(
        f"{e['t_ms']:8.0f} ms  {e['type']:14s} {e.get('label', '')} {e.get('reasons', '')}"))
    gate.reflex.clock.start_secs = asyncio.get_running_loop().time()
    session.say(" ".join((GREETING, *MONOLOGUE[:4])))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for k in range(len(mic_audio) // MIC_FRAME):
        await asyncio.sleep(max(0.0, t0 + k * 0.02 - loop.time()))
        assert gate.output is not None
        await gate.output.tick()
        speaker.next_frame()
        mic.chan.send_nowait(rtc.AudioFrame(data=mic_audio[k * MIC_FRAME:(k + 1) * MIC_FRAME].tobytes(),
                                            sample_rate=16_000, num_channels=1, samples_per_channel=MIC_FRAME))
    print(f"LiveKit interruptions raised by voicegate: {gate.stats.interruptions}; turns: {gate.stats.turns}")
    await gate.aclose()
    await session.aclose()
    return 0 if gate.stats.interruptions == 1 else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["check"]:
        sys.exit(asyncio.run(check()))
    cli.run_app(WorkerOptions(entrypoint_fnc=entrypoint))
