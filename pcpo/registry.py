"""A small name -> factory registry with errors that list what exists."""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None, *, overwrite: bool = False):
        def deco(o: T) -> T:
            if name in self._items and not overwrite and self._items[name] is not o:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = o
            return o

        return deco(obj) if obj is not None else deco

    def get(self, name: str, field: str | None = None) -> T:
        if name not in self._items:
            where = f"{field}: " if field else ""
            raise KeyError(
                f"{where}unknown {self.kind} {name!r}; registered: {', '.join(sorted(self._items)) or '(none)'}"
            )
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def items(self):
        return sorted(self._items.items())
