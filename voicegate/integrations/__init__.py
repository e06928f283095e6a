"""voicegate inside the voice-agent frameworks people already run (each module imports its framework).

- :mod:`voicegate.integrations.pipecat`: a processor pair for a Pipecat 1.14 pipeline.
- :mod:`voicegate.integrations.livekit`: an ``AgentSession`` of LiveKit Agents 1.8.9.

Both are thin callers of :class:`voicegate.reflex.Reflex`.
"""
