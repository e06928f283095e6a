"""The LLM agent: an OpenAI-compatible chat model, streamed, one named task per reply, cancelled on a stop.

The model never decides whether to stop talking (the gate does). It receives only what the caller actually heard
of its previous replies: :class:`~voicegate.agent.base.ReplyRunner` records each assistant turn cut at the playout
position.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from voicegate.agent.base import ReplyRunner
from voicegate.agent.sentences import SentenceSplitter
from voicegate.config import AgentOptions
from voicegate.events import EventBus
from voicegate.gate.relevance import STOP_PHRASES, normalize

log = logging.getLogger(__name__)

_STOP_ONLY = frozenset(normalize(p) for p in STOP_PHRASES)
APOLOGY = "Sorry, I lost my train of thought there. Could you say that again?"


class LlmError(RuntimeError):
    """The LLM failed; ``cause`` is a short machine-readable reason (``timeout``, ``http_401``, …)."""

    def __init__(self, cause: str, message: str) -> None:
        super().__init__(message)
        self.cause = cause


def describe_error(exc: BaseException) -> tuple[str, str]:
    """Map an ``openai`` / transport exception to ``(cause, message naming the fix)``."""
    import openai

    if isinstance(exc, LlmError):
        return exc.cause, str(exc)
    if isinstance(exc, openai.AuthenticationError):
        return "http_401", "the LLM endpoint refused the key (401): check OPENAI_API_KEY"
    if isinstance(exc, openai.APIStatusError):
        return f"http_{exc.status_code}", f"the LLM endpoint answered {exc.status_code}: {exc.message}"
    if isinstance(exc, openai.APITimeoutError):
        return "timeout", "the LLM request timed out"
    if isinstance(exc, openai.APIConnectionError):
        return "unreachable", f"cannot reach the LLM at OPENAI_BASE_URL: {exc}"
    return "stream_broken", f"the LLM stream failed: {type(exc).__name__}: {exc}"


class LlmAgent:
    """Streams chat completions and speaks them sentence by sentence as they arrive."""

    def __init__(self, runner: ReplyRunner, events: EventBus, options: AgentOptions, client: Any = None) -> None:
        import openai

        self.runner = runner
        self.events = events
        self.options = options
        self.client = client or openai.AsyncOpenAI(
            api_key=options.api_key or "not-needed", base_url=options.base_url, max_retries=0,
            timeout=options.first_token_timeout_secs + 30.0)

    def start(self) -> None:
        """A short greeting."""
        log.info("call=%s LLM %s at %s", self.events.call_id, self.options.model, self.options.base_url or "OpenAI")
        self.runner.say([self.options.greeting])

    def user_turn(self, text: str) -> None:
        """Answer ``text`` in a new reply task (the previous one, if any, is cancelled).

        A bare stop command ("stop", "wait", "hold on") is not a question: the bot stays silent and listens.
        """
        norm = normalize(text)
        if not norm or norm in _STOP_ONLY:
            log.info("call=%s user turn %r is a bare stop command: listening", self.events.call_id, text)
            return
        self.runner.history.append({"role": "user", "content": text})
        self.runner.say(self._reply(), requested_ms=self.events.clock.now_ms())

    def cancel(self) -> None:
        """Cancel the reply in flight: the HTTP stream is closed and nothing more is synthesized."""
        self.runner.cancel()

    async def aclose(self) -> None:
        """Close the HTTP client (its connections)."""
        await self.client.close()

    def messages(self) -> list[dict[str, str]]:
        """The request's messages: system prompt, then the honest history (role and content only)."""
        turns = [{"role": str(m["role"]), "content": str(m["content"])} for m in self.runner.history]
        return [{"role": "system", "content": self.options.system_prompt}, *turns]

    async def _reply(self) -> AsyncIterator[str]:
        splitter = SentenceSplitter()
        t0 = time.perf_counter()
        text = ""
        try:
            async for delta in self._deltas():
                text += delta
                for sentence in splitter.feed(delta):
                    yield sentence
            for sentence in splitter.flush():
                yield sentence
            self.events.emit("agent.reply", text=text, source="llm", model=self.options.model,
                             llm_ms=round((time.perf_counter() - t0) * 1000, 1))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            cause, message = describe_error(exc)
            if text and cause == "unreachable":
                cause, message = "stream_broken", f"the LLM stream broke mid-answer: {exc}"
            log.warning("call=%s LLM failed (%s): %s", self.events.call_id, cause, message)
            self.events.emit("error", stage="llm", cause=cause, message=message)
            yield APOLOGY

    async def _deltas(self) -> AsyncIterator[str]:
        stream = await asyncio.wait_for(
            self.client.chat.completions.create(model=self.options.model, messages=self.messages(),  # type: ignore[arg-type]
                                                stream=True),
            timeout=self.options.first_token_timeout_secs)
        try:
            iterator = stream.__aiter__()
            first = True
            while True:
                try:
                    if first:
                        chunk = await asyncio.wait_for(iterator.__anext__(), self.options.first_token_timeout_secs)
                    else:
                        chunk = await iterator.__anext__()
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise LlmError("timeout", f"no first token within {self.options.first_token_timeout_secs} s "
                                   "(VOICEGATE_LLM_TIMEOUT_SECS)") from None
                first = False
                if chunk.choices and chunk.choices[0].delta and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content
        finally:
            await stream.close()
