"""Plain registries for extension points (suites, detectors, drift methods, sinks)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A named mapping of `family.name` keys to objects, filled by a decorator."""

    def __init__(self, family: str) -> None:
        self.family = family
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        key = f"{self.family}.{name}"

        def add(obj: T) -> T:
            if key in self._items:
                raise ValueError(f"{key} is already registered")
            self._items[key] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        key = name if name.startswith(f"{self.family}.") else f"{self.family}.{name}"
        try:
            return self._items[key]
        except KeyError:
            raise KeyError(f"unknown {self.family} {name!r}; valid: {', '.join(sorted(self._items)) or '(none)'}") from None

    def names(self) -> list[str]:
        return sorted(k.split(".", 1)[1] for k in self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __contains__(self, name: str) -> bool:
        return f"{self.family}.{name}" in self._items or name in self._items
