"""Canary markers: strings a probe plants so that a leak or an injected instruction is proven."""

from __future__ import annotations

from collections.abc import Sequence


def find_marker(markers: Sequence[str], response: str) -> bool:
    """Whether any canary marker occurs in the response, ignoring case."""
    folded = response.casefold()
    return any(m and m.casefold() in folded for m in markers)
