"""The contract every attack fulfils, owned here so that each attack is only its loss and its loop.

- Inputs are pixels in [0,1] (N, C, H, W); eps and step are in pixel space. Each call checks that, with one
  host read, unless `check_input_range` is off: the training attacks turn it off (a read per attack call would
  stall every training step), since the loaders produce [0, 1] by construction (uint8 / 255).
- Random starts are drawn per sample by its row in a global batch: sample i of x is row `sample_offset + i` of
  a draw over `total_samples` rows (default: x's own rows). Under torchrun each rank sets its slice's window
  (`set_sample_window`), so the ranks' starts differ and together equal one process's on the global batch.
- The device is the input's; the attack draws its randomness from a `torch.Generator` it is given,
  or from the global torch RNG (which the trainer checkpoints, so runs resume exactly).
- The model runs in eval mode inside `eval_mode`, which restores every submodule's own training
  flag afterwards; BatchNorm running statistics are therefore never updated by an attack.
- Gradients are taken w.r.t. the input only (`torch.autograd.grad`), so parameter `.grad` is never
  touched and no weight gradients are computed; the loss is fp32 whatever the autocast dtype.
- The result is a new, detached tensor; `x` is never modified.
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..errors import ConfigError


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode; on exit restore each one's own flag, even after an error.

    Restoring per submodule matters: a model may be partly frozen (some BatchNorm layers in eval
    mode inside a training model), and a blanket `model.train(previous)` would unfreeze them.
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in flags:
            m.training = training


def draw_seed(generator: torch.Generator | None) -> int:
    """A 31-bit seed from `generator` (on its own device), or from the global torch RNG when None."""
    if generator is None:
        return int(torch.randint(0, 2**31 - 1, (1,)).item())
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device).item())


def local_generator(seed: int, device: torch.device) -> torch.Generator:
    """A generator on the input's device seeded from `seed`: the same seed gives the same noise."""
    return torch.Generator(device=device).manual_seed(seed)


class Attack(ABC):
    """Base class: validates the arguments and the input, sets eval mode, enables autograd.

    Subclasses implement `perturb(model, x, y) -> x_adv` on a detached `x`, already inside
    `eval_mode` and `torch.enable_grad()`.
    """

    def __init__(self, eps: float, step: float, steps: int, *, generator: torch.Generator | None = None):
        name = type(self).__name__
        if not (math.isfinite(eps) and eps >= 0):
            raise ConfigError(f"{name}: eps = {eps!r}, expected a finite value >= 0 (pixel space)")
        if not (math.isfinite(step) and step >= 0):
            raise ConfigError(f"{name}: step = {step!r}, expected a finite value >= 0 (pixel space)")
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
            raise ConfigError(f"{name}: steps = {steps!r}, expected an integer >= 0")
        self.eps = float(eps)
        self.step = float(step)
        self.steps = int(steps)
        self.generator = generator
        self.check_input_range = True
        self.sample_offset = 0
        self.total_samples: int | None = None

    def set_sample_window(self, offset: int, total: int) -> None:
        """The inputs of the next calls are rows [offset, offset + N) of a batch of `total` rows."""
        if not 0 <= offset < total:
            raise ValueError(f"{type(self).__name__}: sample window offset {offset} outside a batch of {total}")
        self.sample_offset, self.total_samples = int(offset), int(total)

    def window_rows(self, n: int) -> tuple[int, int]:
        """(offset, total) of a batch of `n` rows: where its samples' random draws are taken from."""
        total = self.sample_offset + n if self.total_samples is None else self.total_samples
        if self.sample_offset + n > total:
            raise ValueError(f"{type(self).__name__}: rows [{self.sample_offset}, {self.sample_offset + n}) do not "
                             f"fit the sample window of {total} rows")
        return self.sample_offset, total

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) floats in [0,1]; y: (N,) int64 labels -> detached x_adv like x."""
        if not x.is_floating_point() or x.dim() < 2:
            raise ValueError(f"{type(self).__name__}: expected float inputs (N, C, H, W), "
                             f"got {x.dtype} {tuple(x.shape)}")
        if self.check_input_range and x.numel() > 0:
            lo, hi = torch.aminmax(x.detach())
            if bool((lo < 0.0) | (hi > 1.0)):  # one host sync per call, not two
                raise ValueError(f"{type(self).__name__}: inputs must lie in [0, 1], "
                                 f"got [{lo.item():.4g}, {hi.item():.4g}]")
        x = x.detach()
        with eval_mode(model), torch.enable_grad():
            x_adv = self.perturb(model, x, y)
        return x_adv.detach()

    @abstractmethod
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x_adv (a new tensor like x) from a detached x; y (N,) labels."""

    @staticmethod
    def input_grad(model: nn.Module, x_adv: torch.Tensor,
                   loss_fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """d loss_fn(model(x_adv)) / d x_adv, shape of x_adv; no parameter gradient is formed.

        `loss_fn` maps fp32 logits (N, K) to a scalar. A fresh leaf shares x_adv's storage, so the
        caller can update x_adv in place once the gradient is back.
        """
        leaf = x_adv.detach().requires_grad_(True)
        loss = loss_fn(model(leaf).float())
        (grad,) = torch.autograd.grad(loss, leaf)
        return grad

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.eps:.6g}, step={self.step:.6g}, steps={self.steps})"
