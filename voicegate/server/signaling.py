"""Validation of ``POST /offer`` bodies: every problem becomes a precise message for a JSON 4xx."""

from __future__ import annotations

import json
from dataclasses import dataclass

from aiortc.sdp import SessionDescription


class OfferError(ValueError):
    """The offer is unusable; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Offer:
    """A validated SDP offer."""

    sdp: str
    type: str = "offer"


def parse_offer(body: bytes) -> Offer:
    """Parse and validate a ``{"sdp": ..., "type": "offer"}`` body.

    Raises:
        OfferError: with a message naming the problem (not JSON, missing field, wrong type, bad SDP, no audio).
    """
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OfferError(f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise OfferError("body must be a JSON object {\"sdp\": ..., \"type\": \"offer\"}")
    missing = [key for key in ("sdp", "type") if key not in data]
    if missing:
        raise OfferError(f"missing field(s): {', '.join(missing)}")
    sdp, type_ = data["sdp"], data["type"]
    if not isinstance(sdp, str) or not isinstance(type_, str):
        raise OfferError("fields 'sdp' and 'type' must be strings")
    if type_ != "offer":
        raise OfferError(f"type must be 'offer', got {type_!r}")
    if not sdp.lstrip().startswith("v=0"):
        raise OfferError("SDP does not parse: it must start with 'v=0'")
    try:
        description = SessionDescription.parse(sdp)
    except Exception as exc:
        raise OfferError(f"SDP does not parse: {exc}") from None
    if not description.media:
        raise OfferError("SDP does not parse: no m= lines")
    if not any(m.kind == "audio" for m in description.media):
        raise OfferError("offer has no audio m-line: voicegate needs the caller's microphone")
    for media in description.media:
        if media.kind == "audio" and (media.ice is None or media.ice.usernameFragment is None or media.dtls is None):
            raise OfferError("SDP does not parse: audio m-line lacks ICE credentials or DTLS fingerprint")
    return Offer(sdp=sdp)
