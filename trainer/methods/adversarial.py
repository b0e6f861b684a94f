"""Adversarial training of one network with any robust objective (trainer/objectives/): PGD-AT, TRADES, RST,
MART, FAT, IAT, each optionally wrapped by DUCAT. The method owns the network, optimiser and step; the objective
owns the attack and the loss."""

from __future__ import annotations

import torch

from ..config import OptimConfig, RunConfig
from ..engine import Engine
from ..engine.step_metrics import StepMetrics
from ..objectives import Objective, build_objective
from .base import ModelFactory, SingleNetworkMethod
from .objective_driven import ObjectiveDriven


class AdversarialTraining(ObjectiveDriven, SingleNetworkMethod):
    """`objective(attack_model=run_model, train_model=train_model, x, y)` per step; its name is the method's."""

    def __init__(self, model_factory: ModelFactory, objective: Objective, optim: OptimConfig, engine: Engine, *,
                 epochs: int, seed: int = 0):
        self.objective = objective
        super().__init__(objective.model_factory(model_factory), optim, engine, epochs=epochs, seed=seed)
        bind = getattr(objective, "bind", None)
        if bind is not None:
            bind(self.model)  # DUCAT reads C from the 2C head

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.objective.name

    @classmethod
    def from_config(cls, cfg: RunConfig, model_factory: ModelFactory, device: torch.device) -> AdversarialTraining:
        engine = Engine(cfg, device)
        method = cls(model_factory, build_objective(cfg.method.name, cfg, engine), cfg.optim, engine,
                     epochs=cfg.train.epochs, seed=cfg.train.seed)
        method.cfg = cfg
        return method

    def loss(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, StepMetrics]:
        return self.objective(self.run_model, self.train_model, x, y, index)

    def step_attack(self) -> object | None:
        return self.objective.attack

    def eval_models(self):
        return self.objective.eval_models(super().eval_models())

    def start_epoch(self, epoch: int) -> dict[str, float]:
        return {**super().start_epoch(epoch), **self.objective.start_epoch(epoch, self.epochs)}
