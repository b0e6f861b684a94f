"""Training methods, one per file, on the `Method` base class; names from `trainer.registry`.

`natural` and `generalist` are registered methods; every registered objective (trainer/objectives/) is also a
method: single-network adversarial training with that objective.
"""

from __future__ import annotations

import torch

from ..config import RunConfig
from ..errors import ConfigError
from ..registry import METHODS, OBJECTIVES, method_names
from .adversarial import AdversarialTraining
from .base import Method, ModelFactory
from .generalist import Generalist
from .natural import Natural


def method_class(name: str) -> type[Method]:
    if name in METHODS:
        return METHODS.get(name)
    if name in OBJECTIVES:
        return AdversarialTraining
    raise ConfigError(f"config field 'method.name' = {name!r}: expected one of {method_names()}")


def build_method(cfg: RunConfig, model_factory: ModelFactory, device: torch.device) -> Method:
    """The method `cfg.method.name` built from the run config (the CLI's path)."""
    return method_class(cfg.method.name).from_config(cfg, model_factory, device)


__all__ = ["AdversarialTraining", "Generalist", "Method", "Natural", "build_method", "method_class"]
