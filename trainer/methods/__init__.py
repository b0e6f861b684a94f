"""Training methods, one per file, on the `Method` base class; names from `trainer.registry`.

`natural` and `generalist` are registered methods; every registered objective (trainer/objectives/) is also a
method: single-network adversarial training with that objective.
"""

from __future__ import annotations

import torch

from trainer.config import RunConfig
from trainer.errors import ConfigError
from trainer.methods.adversarial import AdversarialTraining
from trainer.methods.base import Method, ModelFactory
from trainer.methods.generalist import Generalist
from trainer.methods.natural import Natural
from trainer.registry import METHODS, OBJECTIVES, method_names


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
