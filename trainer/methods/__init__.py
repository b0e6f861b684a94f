"""Training methods, one per file, on the `Method` base class."""

from __future__ import annotations

import torch

from trainer.config import RunConfig
from trainer.errors import ConfigError
from trainer.methods.base import Method, ModelFactory
from trainer.methods.generalist import Generalist
from trainer.methods.natural import Natural
from trainer.methods.pgd_at import PGDAT
from trainer.methods.trades import TRADES

METHOD_CLASSES: dict[str, type[Method]] = {cls.name: cls for cls in (Natural, PGDAT, TRADES, Generalist)}


def build_method(cfg: RunConfig, model_factory: ModelFactory, device: torch.device) -> Method:
    try:
        cls = METHOD_CLASSES[cfg.method.name]
    except KeyError:
        raise ConfigError(f"config field 'method.name' = {cfg.method.name!r}: expected one of "
                          f"{sorted(METHOD_CLASSES)}") from None
    return cls(cfg, model_factory, device)


__all__ = ["METHOD_CLASSES", "Method", "build_method"]
