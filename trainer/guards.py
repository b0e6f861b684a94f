"""The NaN/Inf guard: a non-finite loss or parameter stops the run before it can reach a checkpoint.

Two checks, at two prices:
- every step, every loss-like scalar of the step's metrics (already Python floats: free). A non-finite
  parameter of a trained network makes the very next loss non-finite, so this catches a blow-up of the
  trained networks one step after it happens;
- every `train.finite_check_every_steps` steps, and always right before a checkpoint is written, every
  floating-point parameter and buffer of every network of the method (and, at checkpoints, the
  optimiser state). This is what sees the tensors no loss looks at: Generalist's averaged networks
  (S_R, S_N and the shipped G), BatchNorm statistics, momentum buffers. It is one `isfinite` pass over
  the weights plus one device sync, so it runs every N steps rather than every step; the check before
  each save is what guarantees that last.pt / best.pt never receive poisoned weights.

Under fp16 a dynamic loss scaler skips the steps whose gradients overflow; a method reports that with
a `skipped_steps` metric (the number of optimiser steps it skipped in this train_step). Such a step's
non-finite loss is expected: it is counted and reported, not treated as a failure.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from trainer.errors import TrainerError

SKIPPED_STEPS = "skipped_steps"


class NonFiniteError(TrainerError, FloatingPointError):
    """Training produced a NaN or Inf; the run was stopped before that state was checkpointed."""


def is_loss_like(metric: str) -> bool:
    """Losses and the KL term of TRADES (robust_loss, natural_loss, loss, kl, robust_kl, ...)."""
    return "loss" in metric or metric == "kl" or metric.endswith("_kl")


def network_of_metric(metric: str, networks: Iterable[str]) -> str:
    """The network a metric belongs to: its name prefix (robust_loss -> robust), else the only network."""
    names = list(networks)
    for name in sorted(names, key=len, reverse=True):
        if metric.startswith(f"{name}_"):
            return name
    return names[0] if len(names) == 1 else "the method's combined objective"


def first_non_finite(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> tuple[str, torch.Tensor] | None:
    """The first (name, tensor) holding a NaN or Inf, or None; one device sync for all of them."""
    items = [(n, t.detach()) for n, t in named_tensors if t.is_floating_point() or t.is_complex()]
    if not items:
        return None
    finite = torch.stack([torch.isfinite(t).all() for _, t in items])  # (T,) bool on the tensors' device
    if bool(finite.all()):
        return None
    return items[int((~finite).nonzero()[0, 0])]


def describe_non_finite(tensor: torch.Tensor) -> str:
    t = tensor.detach()
    return (f"{int(torch.isnan(t).sum())} NaN and {int(torch.isinf(t).sum())} Inf among its "
            f"{t.numel()} values")


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> Iterable[tuple[str, torch.Tensor]]:
    """(name, tensor) of every tensor in an optimiser's per-parameter state (momentum buffers, ...)."""
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                yield f"{key} of parameter #{index}", value


@dataclass
class LastGood:
    path: Path
    step: int


class FiniteGuard:
    """Stops training with a NonFiniteError that names the step, epoch, network and quantity.

    `every_steps` = 0 checks the parameters only before checkpoints. The caller records each
    checkpoint it writes (`record_checkpoint`) so that the error can point at the last good one.
    """

    def __init__(self, every_steps: int, last_good: LastGood | None = None):
        if every_steps < 0:
            raise ValueError(f"every_steps = {every_steps}: expected an integer >= 0")
        self.every_steps = every_steps
        self.last_good = last_good
        self.skipped_steps = 0

    def record_checkpoint(self, path: Path, step: int) -> None:
        self.last_good = LastGood(Path(path), step)

    def after_step(self, metrics: Mapping[str, float], *, step: int, epoch: int,
                   networks: Mapping[str, nn.Module]) -> None:
        """Check a finished step's metrics, and every `every_steps` steps the networks' tensors."""
        skipped = metrics.get(SKIPPED_STEPS, 0)
        if skipped and math.isfinite(skipped) and skipped > 0:
            self.skipped_steps += int(skipped)
            print(f"step {step} (epoch {epoch}): the loss scaler skipped {int(skipped)} optimiser step(s) "
                  f"with non-finite gradients; {self.skipped_steps} skipped so far")
        else:
            for name, value in metrics.items():
                if is_loss_like(name) and not math.isfinite(value):
                    self._fail(f"non-finite {name} = {value}", step, epoch, network_of_metric(name, networks))
        if self.every_steps and step % self.every_steps == 0:
            self.check_networks(step=step, epoch=epoch, networks=networks)

    def check_networks(self, *, step: int, epoch: int, networks: Mapping[str, nn.Module],
                       optimizers: Mapping[str, torch.optim.Optimizer] | None = None) -> None:
        """Every floating-point parameter and buffer of every network (and optimiser state, if given)."""
        for net_name, net in networks.items():
            bad = first_non_finite([*net.named_parameters(), *net.named_buffers()])
            if bad is not None:
                tensor_name, tensor = bad
                self._fail(f"non-finite parameter '{tensor_name}' ({describe_non_finite(tensor)})", step, epoch,
                           net_name)
        for opt_name, opt in (optimizers or {}).items():
            bad = first_non_finite(optimizer_tensors(opt))
            if bad is not None:
                state_name, tensor = bad
                self._fail(f"non-finite optimiser state '{state_name}' ({describe_non_finite(tensor)})", step,
                           epoch, opt_name)

    def _fail(self, quantity: str, step: int, epoch: int, network: str) -> None:
        if self.last_good is None:
            last = "no checkpoint had been written yet"
        else:
            last = f"the last good checkpoint, {self.last_good.path} (step {self.last_good.step}), is intact"
        raise NonFiniteError(f"{quantity} at step {step} (epoch {epoch}) in network '{network}'; "
                             f"training stopped before this state was checkpointed; {last}")
