"""Media plane: the inbound consumer (48 kHz stereo → 16 kHz mono) and the outbound playout track."""

from voicegate.media.inbound import InboundAudio, PcmChunk
from voicegate.media.playout import PlayoutListener, PlayoutTrack, UtteranceReport

__all__ = ["InboundAudio", "PcmChunk", "PlayoutListener", "PlayoutTrack", "UtteranceReport"]
