"""Optimisers and their per-epoch learning rate."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from trainer.config import OptimConfig


def build_sgd(params: Iterable[torch.nn.Parameter], cfg: OptimConfig, device: torch.device) -> torch.optim.SGD:
    """SGD with momentum; torch's fused kernel on CUDA (one launch for all tensors), foreach elsewhere."""
    fused = device.type == "cuda"
    return torch.optim.SGD(
        list(params),
        lr=cfg.lr.values[0],
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        nesterov=cfg.nesterov,
        fused=fused or None,
        foreach=None if fused else True,
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
