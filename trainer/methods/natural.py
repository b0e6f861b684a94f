"""Natural (standard) training: cross-entropy on clean inputs."""

from __future__ import annotations

import torch

from ..config import RunConfig
from ..engine import Engine
from ..engine.step_metrics import StepMetrics
from ..objectives.base import CleanObjective
from ..registry import METHODS
from .base import ModelFactory, SingleNetworkMethod


@METHODS.register("natural", supports_ducat=False, graph_capturable=True)
class Natural(SingleNetworkMethod):
    name = "natural"
    update_phase = "natural_update"

    @classmethod
    def from_config(cls, cfg: RunConfig, model_factory: ModelFactory, device: torch.device) -> Natural:
        method = cls(model_factory, cfg.optim, Engine(cfg, device), epochs=cfg.train.epochs, seed=cfg.train.seed)
        method.cfg = cfg
        return method

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, StepMetrics]:
        return CleanObjective().loss(self.train_model, x, y)
