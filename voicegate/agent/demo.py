"""The demo assistant: used when no LLM is configured. Greets, then reads a long monologue to interrupt."""

from __future__ import annotations

import logging

from voicegate.agent.base import ReplyRunner
from voicegate.events import EventBus

log = logging.getLogger(__name__)

GREETING = "Hi! I'm the voicegate demo. Interrupt me any time: say stop, or wait, or just start talking."

MONOLOGUE = (
    "Let me tell you about a quiet morning by the sea.",
    "The tide is low, and the sand is still cool from the night.",
    "A few gulls are arguing over something only they can see.",
    "Further down the beach, an old man walks his dog along the waterline.",
    "The dog runs ahead, stops, looks back, and runs ahead again.",
    "Out on the water, a small fishing boat is heading home with its lights still on.",
    "The air smells of salt, seaweed, and coffee from the kiosk by the pier.",
    "The owner opens the shutters one by one, and sets out six blue chairs.",
    "Her first customer is always the same: a cyclist who orders a double espresso and a croissant.",
    "They talk about the weather, which is the only thing anyone talks about at this hour.",
    "By eight o'clock the sun is above the cliffs, and the sand begins to warm.",
    "Families arrive with umbrellas, buckets, and far too many sandwiches.",
    "A child builds a castle and defends it bravely against the incoming tide.",
    "The tide wins, as it always does, and the child starts again a little higher up.",
    "Somewhere a radio plays a song everyone knows but nobody can name.",
    "By noon the kiosk has run out of ice cream, and the owner puts up a hand written sign.",
    "In the afternoon, the wind picks up and the kites come out.",
    "Red ones, yellow ones, and one enormous octopus with eight green legs.",
    "As the light turns golden, people pack up slowly, reluctant to leave.",
    "The fishing boat goes out again, and the gulls follow it, still arguing.",
    "And the old man and his dog walk back along the waterline, exactly as they came.",
    "That's the whole story. Thank you for listening, and feel free to interrupt me next time.",
)


class DemoAssistant:
    """Greets the caller, reads :data:`MONOLOGUE`, and after an interruption answers with a short fixed reply."""

    def __init__(self, runner: ReplyRunner, events: EventBus, greeting: str = GREETING) -> None:
        self.runner = runner
        self.events = events
        self.greeting = greeting

    def start(self) -> None:
        """Greet, then read the monologue sentence by sentence."""
        log.info("call=%s no LLM configured: the demo assistant answers (set OPENAI_BASE_URL to use an LLM)",
                 self.events.call_id)
        self.runner.say([self.greeting, *MONOLOGUE])

    def user_turn(self, text: str) -> None:
        """Acknowledge the user's turn without restarting the monologue."""
        self.runner.history.append({"role": "user", "content": text})
        reply = f"Okay, I stopped. You said: {text}." if text else "Okay, I stopped. I'm listening."
        self.events.emit("agent.reply", text=reply, source="demo")
        self.runner.say([reply])

    def cancel(self) -> None:
        """Cancel the reply in flight."""
        self.runner.cancel()

    async def aclose(self) -> None:
        """Nothing to release."""
