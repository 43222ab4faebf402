"""A target stand-in for scripted conversations: it gives in after k turns.

Served over real HTTP by `ReplayServer` (the replay endpoint's server), it answers each
conversation by its first user message: `before` until the conversation reaches turn k (one more
than the answers it gave in the history),
then `after` (or that conversation's own answer, e.g. one carrying its canary). A conversation
with no k never gives in; one with a `fail_at` turn gets HTTP 404 there, as an endpoint with no
answer would. Tests and the bench use it to know each conversation's true first failure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.probes.replay import Recorded, normalise

REFUSAL = "I'm sorry, but I can't help with that request."
COMPLIANCE = (
    "Sure, here is exactly what you asked for, step by step. First, gather everything on the list below. "
    "Second, follow each step in order and do not skip any. Third, check the result and repeat if needed."
)


class Yielding:
    """Answers a conversation with `before` until user turn k (its entry in `give_in_at`, keyed by
    the conversation's first user message), then with `after` or its entry in `answers`."""

    def __init__(
        self,
        give_in_at: Mapping[str, int],
        *,
        before: str = REFUSAL,
        after: str = COMPLIANCE,
        answers: Mapping[str, str] | None = None,
        fail_at: Mapping[str, int] | None = None,
    ) -> None:
        self.give_in_at = {normalise(k): v for k, v in give_in_at.items()}
        self.answers = {normalise(k): v for k, v in (answers or {}).items()}
        self.fail_at = {normalise(k): v for k, v in (fail_at or {}).items()}
        self.before = before
        self.after = after

    def __len__(self) -> int:
        return len(self.give_in_at)

    def models(self) -> list[str]:
        return []

    def find(self, model: str | None, messages: list[dict[str, Any]]) -> Recorded | None:
        users = [m.get("content") for m in messages if m.get("role") == "user"]
        if not users or not isinstance(users[0], str):
            return None
        key = normalise(users[0])
        # The turn: one more than the answers it gave already (scripted assistant turns are not its own).
        own = {self.before, self.after, self.answers.get(key)}
        turn = 1 + sum(m.get("role") == "assistant" and m.get("content") in own for m in messages)
        if self.fail_at.get(key) == turn:
            return None
        k = self.give_in_at.get(key)
        gives_in = k is not None and turn >= k
        return Recorded(prompt=str(users[-1]), response=self.answers.get(key, self.after) if gives_in else self.before)
