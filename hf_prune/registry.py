"""Name -> implementation tables whose built-in entries are imported the first time they are used.

The command line lists target and criterion names in ``--help`` and checks them while parsing; if
naming them imported their modules, every ``hf-prune --help`` or mistyped flag would first load
torch and transformers (seconds). Built-ins are therefore registered as ``"module:attribute"``
strings (the way transformers' Auto mappings name their models) and resolved on first lookup;
code outside the package adds entries with :meth:`Registry.register`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from importlib import import_module
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """A read-only mapping of names to implementations; duplicates are refused."""

    def __init__(self, kind: str, package: str, builtin: Mapping[str, str]):
        self.kind = kind  # "importance", "target": used in messages
        self._package = package
        self._builtin = dict(builtin)  # name -> ".module:attribute", relative to package
        self._loaded: dict[str, T] = {}

    def register(self, name: str, value: T) -> T:
        """Add ``name``; a built-in module registering its own entry while it is imported is allowed."""
        if name in self._loaded or (name in self._builtin and not self._is_builtin(name, value)):
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._loaded[name] = value
        return value

    def _is_builtin(self, name: str, value: object) -> bool:
        module, _, _ = self._builtin[name].partition(":")
        return getattr(value, "__module__", None) == self._package + module

    def __getitem__(self, name: str) -> T:
        if name not in self._loaded:
            if name not in self._builtin:
                raise KeyError(f"unknown {self.kind} {name!r}; available: {', '.join(sorted(self))}")
            module, _, attribute = self._builtin[name].partition(":")
            value = getattr(import_module(module, self._package), attribute)
            self._loaded.setdefault(name, value)
        return self._loaded[name]

    def __contains__(self, name: object) -> bool:
        return name in self._builtin or name in self._loaded

    def __iter__(self) -> Iterator[str]:
        return iter({**dict.fromkeys(self._builtin), **dict.fromkeys(self._loaded)})

    def __len__(self) -> int:
        return len(set(self._builtin) | set(self._loaded))
