"""The media server: aiohttp app, signaling (``POST /offer``) and one session per peer connection."""

from voicegate.server.app import create_app
from voicegate.server.session import Session

__all__ = ["Session", "create_app"]
