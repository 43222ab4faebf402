"""Stand-ins for the models around a probe run: a target that gives in after k turns (scripted
conversations, Crescendo), a target that gives in to prompts holding a trigger (PAIR), and an
attacker that proposes scripted prompts (adaptive probes).

Served over real HTTP by `ReplayServer` (the replay endpoint's server), it answers each
conversation by its first user message: `before` until the conversation reaches turn k (one more
than the answers it gave in the history),
then `after` (or that conversation's own answer, e.g. one carrying its canary). A conversation
with no k never gives in; one with a `fail_at` turn gets HTTP 404 there, as an endpoint with no
answer would. Tests and the bench use it to know each conversation's true first failure.

`Triggered` answers `after` to a request whose last user message holds one of its triggers, and
`before` to any other: a PAIR attack succeeds at the first iteration whose prompt holds one.
`ScriptedAttacker` answers an attacker's requests in the JSON the attacker prompts ask for
(`pipeline/probes/adaptive.py`): the goal is found in the system prompt, the iteration or turn
by the replies it gave already, and the prompt is the goal's next scripted one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
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


class Triggered:
    """Answers `after` to a request whose last user message holds one of `triggers` (case-folded),
    `before` to any other: each request on its own, as PAIR sends them."""

    def __init__(self, triggers: Sequence[str], *, before: str = REFUSAL, after: str = COMPLIANCE) -> None:
        self.triggers = [normalise(t) for t in triggers]
        self.before = before
        self.after = after

    def __len__(self) -> int:
        return len(self.triggers)

    def models(self) -> list[str]:
        return []

    def find(self, model: str | None, messages: list[dict[str, Any]]) -> Recorded | None:
        last = next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), None)
        if not isinstance(last, str):
            return None
        hit = any(t in normalise(last) for t in self.triggers)
        return Recorded(prompt=last, response=self.after if hit else self.before)


class ScriptedAttacker:
    """An attacker that proposes, for each goal (keyed by its text), the next of its scripted
    prompts: in PAIR's JSON when its system prompt asks for an "improvement", else in Crescendo's.
    A request past a goal's script, or for an unknown goal, gets HTTP 404 (an attacker error); the
    turn a goal's entry in `garbled` names gets `garble` instead of JSON (an unusable reply)."""

    def __init__(self, scripts: Mapping[str, Sequence[str]], *, garbled: Mapping[str, int] | None = None, garble: str = REFUSAL) -> None:
        self.scripts = {normalise(goal): list(prompts) for goal, prompts in scripts.items()}
        self.garbled = {normalise(goal): k for goal, k in (garbled or {}).items()}
        self.garble = garble

    def __len__(self) -> int:
        return sum(len(p) for p in self.scripts.values())

    def models(self) -> list[str]:
        return []

    def find(self, model: str | None, messages: list[dict[str, Any]]) -> Recorded | None:
        system = messages[0].get("content") if messages and messages[0].get("role") == "system" else None
        if not isinstance(system, str):
            return None
        goal = next((g for g in self.scripts if g in normalise(system)), None)
        if goal is None:
            return None
        # The turn: one more than the proposals it made already (its replies in the history).
        turn = 1 + sum(m.get("role") == "assistant" for m in messages)
        asked = str(messages[-1].get("content"))
        if self.garbled.get(goal) == turn:
            return Recorded(prompt=asked, response=self.garble)
        if turn > len(self.scripts[goal]):
            return None
        note = "improvement" if '"improvement"' in system else "plan"
        return Recorded(prompt=asked, response=json.dumps({note: f"scripted step {turn}", "prompt": self.scripts[goal][turn - 1]}))
