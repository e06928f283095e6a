"""The reflex layer: relevance verdicts and the duplex controller that owns the conversation state."""
