"""Robust objectives (attack + loss), one per file, registered by name in `trainer.registry.OBJECTIVES`.

Each objective name is also a single-network method name (adversarial training with that objective,
trainer/methods/adversarial.py) and a valid `method.generalist.robust_objective`. DUCAT wraps any objective
registered with `supports_ducat=True`.
"""

from __future__ import annotations

from ..config import RunConfig
from ..errors import ConfigError
from ..registry import OBJECTIVES
from . import fat, iat, mart, pgd_at, rst, trades  # noqa: F401  (registration)
from .base import CleanObjective, Objective
from .ducat import Ducat, DucatNatural


def build_objective(name: str, cfg: RunConfig, engine) -> Objective:
    """The objective `name` with the run's settings, wrapped by DUCAT when `method.ducat.enabled`."""
    if name not in OBJECTIVES:
        raise ConfigError(f"objective {name!r}: expected one of {OBJECTIVES.names()}")
    objective = OBJECTIVES.get(name).from_config(cfg, engine)
    if cfg.method.ducat.enabled:
        objective = Ducat(objective, cfg.method.ducat)
    return objective


__all__ = ["CleanObjective", "Ducat", "DucatNatural", "Objective", "build_objective"]
