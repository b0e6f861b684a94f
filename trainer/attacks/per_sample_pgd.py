"""PGD with one radius and one step size per sample, given with each call (instance-adaptive adversarial training,
trainer/objectives/iat.py). The fused step and random-start kernels take (N,) eps and step tensors, so a batch with
N different radii is still one launch per step and no host read."""

from __future__ import annotations

import torch
from torch import nn

from .pgd import PGD


class PerSamplePGD(PGD):
    """`attack(model, x, y, eps=eps_i, step=step_i)`: PGD-k on the cross-entropy with sample i in the ball of radius
    eps_i (N,) and moving step_i (N,) per step, both fp32 on x's device. A sample with eps_i = 0 stays at x.
    The constructor's eps and step are the configured scalars, which the caller derives the per-sample ones from."""

    def __init__(self, eps: float, step: float, steps: int, **kwargs):
        super().__init__(eps, step, steps, **kwargs)
        self._radius: torch.Tensor | None = None  # (N,) during a call
        self._step_size: torch.Tensor | None = None  # (N,) during a call

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: torch.Tensor,
                 step: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        for name, value in (("eps", eps), ("step", step)):
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != (n,):
                raise ValueError(f"{type(self).__name__}: {name} must be a ({n},) tensor, one value per sample")
        self._radius, self._step_size = eps, step
        try:
            return super().__call__(model, x, y)
        finally:
            self._radius = self._step_size = None

    def radius(self) -> torch.Tensor:
        return self._radius

    def step_size(self) -> torch.Tensor:
        return self._step_size

    def ball_is_a_point(self) -> bool:
        return False  # a sample with eps_i = 0 is kept at x by the step itself
