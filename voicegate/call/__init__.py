"""The call core: everything a call is, whatever carries its audio (WebRTC, a WebSocket)."""

from voicegate.call.core import CallCore

__all__ = ["CallCore"]
