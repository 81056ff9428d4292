"""Name → factory registries of datasets, reranker models, strategies and device tasks.

A registry is filled when the module that defines the entries is imported, and read by name
through :meth:`Registry.get`, which names the known entries when a name is unknown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any


class Registry:
    """Maps names to factories.

    Parameters
    ----------
    kind : str
        What the entries are ("dataset", "model", "strategy"), for error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator registering ``fn`` under ``name`` (a name can be registered once)."""

        def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._entries and self._entries[name] is not fn:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = fn
            return fn

        return deco

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._entries:
            known = ", ".join(sorted(self._entries)) or "none"
            raise ValueError(f"unknown {self.kind} {name!r}; known: {known}")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


DATASETS = Registry("dataset")
MODELS = Registry("model")
STRATEGIES = Registry("strategy")
DEVICE_TASKS = Registry("device task")
