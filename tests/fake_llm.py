"""A real, local OpenAI-compatible HTTP server for the tests (chat completions as SSE, audio.speech as PCM)."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import web
from aiohttp.test_utils import TestServer


@dataclass
class FakeLlm:
    """Behaviour is set per test; every request body is recorded."""

    reply: str = "Paris is the capital of France. It is lovely in spring."
    token_delay_s: float = 0.01
    first_token_delay_s: float = 0.0
    status: int = 200
    break_after_tokens: int | None = None
    tts_status: int = 200
    transcript: str = "a large oat milk latte please"
    """What ``/v1/audio/transcriptions`` answers (with ``transcribe_status``)."""
    transcribe_status: int = 200
    requests: list[dict[str, Any]] = field(default_factory=list)
    transcriptions: list[dict[str, Any]] = field(default_factory=list)
    """Each transcription request: model, language, audio bytes, whether the file is a WAV."""
    streams_started: int = 0
    streams_completed: int = 0
    disconnects: int = 0
    server: TestServer | None = None

    @property
    def base_url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}/v1"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/audio/speech", self._speech)
        app.router.add_post("/v1/audio/transcriptions", self._transcribe)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        body = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": "test-model", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(body)}\n\n".encode()

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        if self.status != 200:
            error = {"message": "Incorrect API key provided", "type": "invalid_request_error",
                     "code": "invalid_api_key"}
            return web.json_response({"error": error}, status=self.status)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        self.streams_started += 1
        try:
            await asyncio.sleep(self.first_token_delay_s)
            await response.write(self._chunk({"role": "assistant", "content": ""}))
            tokens = [w + " " for w in self.reply.split(" ")]
            tokens[-1] = tokens[-1].rstrip()
            for i, token in enumerate(tokens):
                if self.break_after_tokens is not None and i == self.break_after_tokens:
                    assert request.transport is not None
                    request.transport.close()  # the connection dies mid-answer
                    return response
                await response.write(self._chunk({"content": token}))
                await asyncio.sleep(self.token_delay_s)
            await response.write(self._chunk({}, "stop"))
            await response.write(b"data: [DONE]\n\n")
            self.streams_completed += 1
        except (ConnectionResetError, asyncio.CancelledError):
            self.disconnects += 1
            raise
        return response

    async def _speech(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        if self.tts_status != 200:
            return web.json_response({"error": {"message": "tts down"}}, status=self.tts_status)
        t = np.arange(24_000 // 2) / 24_000
        pcm = (8000 * np.sin(2 * np.pi * 220 * t)).astype("<i2")
        return web.Response(body=pcm.tobytes(), content_type="application/octet-stream")

    async def _transcribe(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload = form["file"]
        assert isinstance(upload, web.FileField)
        audio = upload.file.read()
        self.transcriptions.append({"model": form.get("model"), "language": form.get("language"),
                                    "bytes": len(audio), "wav": audio[:4] == b"RIFF"})
        if self.transcribe_status != 200:
            return web.json_response({"error": {"message": "model overloaded"}}, status=self.transcribe_status)
        return web.json_response({"text": self.transcript})
