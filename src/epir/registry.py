"""One small registry, used for models and datasets."""
from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from epir.errors import ConfigError, unknown_name

T = TypeVar("T", bound=Callable[..., Any])


class Registry(Generic[T]):
    """Maps names to factories, with optional metadata (e.g. a model's default recipe)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def register(self, name: str | None = None, **meta: Any) -> Callable[[T], T]:
        """Decorator: ``@REG.register()`` registers a factory under its function name."""

        def deco(fn: T) -> T:
            key = name or fn.__name__
            if key in self._items:
                raise ConfigError(f"{self.kind} {key!r} is registered twice")
            self._items[key] = fn
            self._meta[key] = meta
            return fn

        return deco

    def get(self, name: str) -> T:
        """The factory registered as ``name`` (an error with a "did you mean" when unknown)."""
        if name not in self._items:
            raise unknown_name(self.kind, name, self._items)
        return self._items[name]

    def meta(self, name: str) -> dict[str, Any]:
        """The metadata registered with ``name``."""
        self.get(name)
        return self._meta[name]

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching a glob ``pattern``, sorted."""
        return sorted(n for n in self._items if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._items
