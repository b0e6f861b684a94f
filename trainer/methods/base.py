"""The contract every training method fulfils; the training loop talks only to this."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from torch import nn

from trainer.config import OptimConfig, RunConfig
from trainer.optim import build_sgd, set_lr

ModelFactory = Callable[[], nn.Module]


class Method(ABC):
    """A training method owns its networks, optimisers and step counter.

    `networks()` and `optimizers()` list everything a checkpoint must hold; `eval_models()` lists the
    models to evaluate, the first being the one that is shipped and selected on the validation split.
    """

    name: str = ""

    def __init__(self, cfg: RunConfig, model_factory: ModelFactory, device: torch.device):
        self.cfg = cfg
        self.device = device
        self.global_step = 0

    @abstractmethod
    def networks(self) -> dict[str, nn.Module]: ...

    @abstractmethod
    def optimizers(self) -> dict[str, torch.optim.Optimizer]: ...

    @abstractmethod
    def eval_models(self) -> dict[str, nn.Module]: ...

    @abstractmethod
    def start_epoch(self, epoch: int) -> dict[str, float]:
        """Set the epoch's schedule values (1-based epoch); return them for logging."""

    @abstractmethod
    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """One optimisation step on a batch of [0,1] inputs; returns scalar metrics for logging."""

    def end_epoch(self, epoch: int) -> None:
        """Hook after the last step of an epoch."""

    def extra_state(self) -> dict:
        return {"global_step": self.global_step}

    def load_extra_state(self, state: dict) -> None:
        self.global_step = int(state["global_step"])


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # fp32 loss whatever the autocast dtype: the loss must not lose its small terms.
    return nn.functional.cross_entropy(logits.float(), y)


def accuracy_count(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean())


class SingleNetworkMethod(Method):
    """Natural, PGD-AT and TRADES: one network, one SGD optimiser, a per-epoch lr schedule."""

    def __init__(self, cfg: RunConfig, model_factory: ModelFactory, device: torch.device):
        super().__init__(cfg, model_factory, device)
        self.model = model_factory().to(device)
        self.optim_cfg: OptimConfig = cfg.optim
        self.optimizer = build_sgd(self.model.parameters(), self.optim_cfg, device)

    def networks(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"model": self.optimizer}

    def eval_models(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def start_epoch(self, epoch: int) -> dict[str, float]:
        lr = self.optim_cfg.lr.at(epoch, self.cfg.train.epochs)
        set_lr(self.optimizer, lr)
        return {"lr": lr}

    @abstractmethod
    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The batch loss with the model in train mode, and metrics to log."""

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        loss, metrics = self.loss(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.global_step += 1
        return {"loss": float(loss.detach()), **metrics}
