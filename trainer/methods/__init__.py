"""Training methods, one per file, on the `Method` base class."""

from __future__ import annotations

import torch

from trainer.config import RunConfig
from trainer.errors import ConfigError
from trainer.methods.base import Method, ModelFactory
from trainer.methods.ducat import DUCAT_METHODS, DucatPlugin, dummy_class_factory
from trainer.methods.generalist import Generalist
from trainer.methods.natural import Natural
from trainer.methods.pgd_at import PGDAT
from trainer.methods.rst import RST
from trainer.methods.trades import TRADES

METHOD_CLASSES: dict[str, type[Method]] = {cls.name: cls for cls in (Natural, PGDAT, TRADES, RST, Generalist)}


def build_method(cfg: RunConfig, model_factory: ModelFactory, device: torch.device) -> Method:
    try:
        cls = METHOD_CLASSES[cfg.method.name]
    except KeyError:
        raise ConfigError(f"config field 'method.name' = {cfg.method.name!r}: expected one of "
                          f"{sorted(METHOD_CLASSES)}") from None
    if cfg.method.ducat.enabled:
        if not issubclass(cls, DucatPlugin):
            raise ConfigError(f"config field 'method.ducat.enabled' = True: expected false with method.name "
                              f"{cfg.method.name!r} (DUCAT plugs into {DUCAT_METHODS} only)")
        # Every network of the method gets the 2C-class head (class k, then its dummy k + C).
        model_factory = dummy_class_factory(model_factory)
    return cls(cfg, model_factory, device)


__all__ = ["METHOD_CLASSES", "Method", "build_method"]
