"""voicegate: a real-time reflex layer for voice agents.

The data flow is ``server → media → audio → asr → gate → agent → tts``: an aiortc server terminates the
browser's call, the inbound track is resampled to 16 kHz mono, Silero VAD pauses the bot at speech onset,
keyword spotting, ASR and a relevance model decide stop or resume, and only then does the LLM hear the user.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
