"""Text to speech behind one interface: text in, PCM with word timings out, synthesis off the event loop."""

from voicegate.tts.base import Speech, Tts
from voicegate.tts.espeak import EspeakTts

__all__ = ["EspeakTts", "Speech", "Tts"]
