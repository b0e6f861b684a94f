"""Optimisers and their per-epoch learning rate.

`engine.optimizer_impl` picks the implementation of SGD with momentum:
- torch (default): torch.optim.SGD, its fused kernel on CUDA (one launch for all tensors), foreach elsewhere;
  with capturable=True (CUDA graphs) the learning rate is a device tensor that `set_lr` changes in place,
  so a captured step follows the schedule without baking a host float.
- apex: apex.optimizers.FusedSGD (NVIDIA apex built with its CUDA extensions), when asked for; asking for it
  without apex installed is a MissingDependencyError that says what to install.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .config import OptimConfig
from .errors import ConfigError, MissingDependencyError

APEX_INSTALL = ("pip install -v --no-build-isolation --config-settings '--build-option=--cpp_ext' "
                "--config-settings '--build-option=--cuda_ext' git+https://github.com/NVIDIA/apex")


def apex_fused_sgd() -> type:
    """apex.optimizers.FusedSGD, or a MissingDependencyError naming what to install."""
    try:
        from apex.optimizers import FusedSGD
    except ImportError as exc:
        raise MissingDependencyError(
            f"config field 'engine.optimizer_impl' = 'apex': NVIDIA apex is not importable ({exc}); install it "
            f"with its CUDA extensions ({APEX_INSTALL}) or set engine.optimizer_impl=torch") from None
    return FusedSGD


def build_sgd(params: Iterable[torch.nn.Parameter], cfg: OptimConfig, device: torch.device, *,
              impl: str = "torch", capturable: bool = False, fused: bool | None = None) -> torch.optim.Optimizer:
    """SGD with momentum by `impl` (torch | apex); see the module docstring. `fused`: torch's fused kernel (None: on
    CUDA only); the engine asks for it under an fp16 loss scale, which it then applies without a host read."""
    params = list(params)
    lr = cfg.lr.values[0]
    if impl == "apex":
        if device.type != "cuda":
            raise ConfigError(f"config field 'engine.optimizer_impl' = 'apex': FusedSGD runs on CUDA only, this "
                              f"run is on {device}")
        if capturable:
            raise ConfigError("config field 'engine.optimizer_impl' = 'apex': FusedSGD takes the learning rate "
                              "as a host float and cannot be captured in a CUDA graph (engine.cuda_graphs)")
        return apex_fused_sgd()(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                nesterov=cfg.nesterov)
    if impl != "torch":
        raise ConfigError(f"config field 'engine.optimizer_impl' = {impl!r}: expected 'torch' or 'apex'")
    fused = device.type == "cuda" if fused is None else fused
    if capturable:
        if not fused:
            raise ConfigError(f"build_sgd: capturable=True needs CUDA (the fused kernel), this run is on {device}")
        # A 1-element fp32 device tensor: the fused kernel reads it on the device at every (replayed) step.
        lr = torch.tensor(lr, dtype=torch.float32, device=device)
    return torch.optim.SGD(
        params,
        lr=lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        nesterov=cfg.nesterov,
        fused=fused or None,
        foreach=None if fused else True,
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate; a tensor learning rate (capturable) is filled in place, so a captured
    CUDA graph reads the new value. One loaded from a checkpoint onto another device is moved back first."""
    for group in optimizer.param_groups:
        current = group["lr"]
        if isinstance(current, torch.Tensor):
            device = group["params"][0].device if group["params"] else current.device
            if current.device != device:
                group["lr"] = current = current.to(device)
            current.fill_(lr)
        else:
            group["lr"] = lr
