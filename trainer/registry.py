"""Name registries: the only lists of model, objective / method and dataset names the config accepts.

A part registers itself where it is defined (timm's `@register_model`), with capability flags the config
checks read instead of hand-kept tuples:

    @MODELS.register("small_cnn")
    def small_cnn(cfg, *, num_classes, in_channels, image_size, mean, std) -> nn.Module: ...

Adding a model, objective or dataset is then one file (plus its test); `trainer.config.validate` asks the
registry, after `load_registrations()` has imported the modules that register the built-in parts.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

_T = TypeVar("_T")


@dataclass(frozen=True)
class Entry(Generic[_T]):
    name: str
    obj: _T
    flags: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[_T]):
    """Name -> object with flags, filled by the `register` decorator; names keep their registration order."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[_T]] = {}

    def register(self, name: str, **flags: Any) -> Callable[[_T], _T]:
        def add(obj: _T) -> _T:
            if name in self._entries and self._entries[name].obj is not obj:
                raise ValueError(f"{self.kind} registry: {name!r} is already registered")
            self._entries[name] = Entry(name, obj, dict(flags))
            return obj

        return add

    def unregister(self, name: str) -> None:
        """Remove a name (tests that register a part of their own clean up with this)."""
        self._entries.pop(name, None)

    def names(self, **flags: Any) -> tuple[str, ...]:
        """Every registered name, or those whose flags equal the given values."""
        return tuple(n for n, e in self._entries.items() if all(e.flags.get(k) == v for k, v in flags.items()))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str) -> _T:
        return self._entries[name].obj

    def flag(self, name: str, key: str, default: Any = False) -> Any:
        return self._entries[name].flags.get(key, default)


MODELS: Registry = Registry("model")
OBJECTIVES: Registry = Registry("objective")
METHODS: Registry = Registry("method")
DATASETS: Registry = Registry("dataset")

# The modules whose import registers the built-in parts.
_BUILTIN = (".models", ".objectives", ".methods", ".data")


def load_registrations() -> None:
    for module in _BUILTIN:
        importlib.import_module(module, __package__)


def method_names() -> tuple[str, ...]:
    """What `method.name` accepts: the registered methods, then every objective (adversarial training with it)."""
    load_registrations()
    return METHODS.names() + tuple(n for n in OBJECTIVES.names() if n not in METHODS)


def method_flag(name: str, key: str) -> bool:
    """A capability flag of a method name: its own registration, else its objective's."""
    load_registrations()
    if name in METHODS:
        return bool(METHODS.flag(name, key))
    return bool(OBJECTIVES.flag(name, key))
