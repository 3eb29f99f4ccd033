"""Name -> factory registries for backbones and strategies.

Example::

    STRATEGIES = Registry("strategy")

    @STRATEGIES.register("full")
    class Full(Strategy): ...

    STRATEGIES.get("full")
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from .errors import FinetuneError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise FinetuneError(
                f"unknown {self.kind} {name!r}{did_you_mean(name, self._items)}; "
                f"choose one of: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
