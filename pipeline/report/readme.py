"""README sections generated from code, kept between marker comments.

`safemon docs settings|cookbook --write` rewrites a section; without `--write` it checks
it, and the tests fail when a section is stale.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.report import settings_reference
from pipeline.store import cookbook


@dataclass(frozen=True)
class Section:
    """A generated README section: its markers and the function that renders its body."""

    start: str
    end: str
    render: Callable[[], str]


SECTIONS = {
    "settings": Section(settings_reference.START, settings_reference.END, settings_reference.render_settings_reference),
    "cookbook": Section(cookbook.START, cookbook.END, cookbook.render_cookbook),
}


def splice(document: str, body: str, start: str, end: str) -> str:
    """`document` with the text between the `start` and `end` markers replaced by `body`."""
    head, found_start, rest = document.partition(start)
    if not found_start:
        raise ValueError(f"marker {start!r} not found")
    _, found_end, tail = rest.partition(end)
    if not found_end:
        raise ValueError(f"marker {end!r} not found after {start!r}")
    return f"{head}{start}\n{body}{end}{tail}"


def refresh(readme: Path, name: str, *, write: bool) -> bool:
    """Whether the README's `name` section is current; with `write`, make it current."""
    try:
        section = SECTIONS[name]
    except KeyError:
        raise KeyError(f"unknown README section {name!r}; valid: {', '.join(sorted(SECTIONS))}") from None
    text = readme.read_text()
    fresh = splice(text, section.render(), section.start, section.end)
    if fresh == text:
        return True
    if write:
        readme.write_text(fresh)
    return False
