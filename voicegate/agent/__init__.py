"""The brain, downstream of the gate: the demo assistant, or an OpenAI-compatible LLM in its own task."""

from voicegate.agent.base import Agent
from voicegate.agent.demo import DemoAssistant

__all__ = ["Agent", "DemoAssistant"]
