"""What each detector reads of a response: its gist (head and tail) and the prompt.

Embedding cost grows with length, so no detector reads a whole response. Refusals show in the
first sentences, which the gist's head holds; whether the response goes on to deliver what was
asked shows in its head and tail (partial refusals often end with "however, I can't ...").
Prompts are cut too: long role-play wrappers say what they are within a few hundred characters.

The opening (the first two sentences) is read as text by the phrase rules, not embedded: as a
view it costs embedding time and adds nothing a cross-fitted head can use. The gist's lengths
trade speed for accuracy; the detector bench's truncation table measures both.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

OPENING_CHARS = 300
GIST_HEAD_CHARS = 200
GIST_TAIL_CHARS = 80
PROMPT_CHARS = 300
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """Case- and whitespace-folded text, typographic apostrophes folded: what duplicates and phrases are matched on."""
    return _SPACE.sub(" ", str(text).casefold().replace("\u2019", "'")).strip()


def cut_at_word(text: str, max_chars: int) -> str:
    """At most `max_chars` of `text`, cut at a space when one is near the end."""
    if len(text) <= max_chars:
        return text
    cut = text.rfind(" ", 0, max_chars)
    return text[: cut if cut > max_chars // 2 else max_chars]


def opening(text: str, max_chars: int = OPENING_CHARS) -> str:
    """The first two sentences of a response, at most `max_chars` (cut at a word)."""
    stripped = text.strip()
    return cut_at_word(" ".join(_SENTENCE_END.split(stripped, maxsplit=2)[:2]), max_chars)


def gist(text: str, head_chars: int = GIST_HEAD_CHARS, tail_chars: int = GIST_TAIL_CHARS) -> str:
    """The head and tail of a response joined by an ellipsis; short responses whole."""
    stripped = text.strip()
    if len(stripped) <= head_chars + tail_chars + 20:
        return stripped
    tail = stripped[-tail_chars:]
    space = tail.find(" ")
    if 0 <= space < tail_chars // 2:
        tail = tail[space + 1 :]
    return f"{cut_at_word(stripped, head_chars)} … {tail}"


def sizes() -> dict[str, int]:
    """The views' sizes, recorded in fitted heads: a head is only valid on views cut the same way."""
    return {"gist_head_chars": GIST_HEAD_CHARS, "gist_tail_chars": GIST_TAIL_CHARS, "prompt_chars": PROMPT_CHARS}


def prompt_view(text: str, max_chars: int = PROMPT_CHARS) -> str:
    """The part of a prompt the detectors embed."""
    return cut_at_word(text.strip(), max_chars)


@dataclass(frozen=True)
class Views:
    """The texts to embed for a batch of (prompt, response) pairs, one list per view."""

    gist: list[str]
    prompt: list[str] | None

    @classmethod
    def of(cls, responses: Sequence[str], prompts: Sequence[str] | None = None) -> Views:
        if prompts is not None and len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        return cls(
            gist=[gist(r) for r in responses],
            prompt=None if prompts is None else [prompt_view(p) for p in prompts],
        )

    def distinct(self) -> list[str]:
        """Every distinct text of the batch, in first-seen order: what one encode call needs."""
        texts = self.gist + (self.prompt or [])
        return list(dict.fromkeys(texts))
