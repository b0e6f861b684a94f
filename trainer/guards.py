"""The NaN/Inf guard: a non-finite loss or parameter stops the run before it can reach a checkpoint.

Nothing here reads the device inside a training step (trainer/engine/step_metrics.py says why). Three checks:
- every step, every loss of the step (metrics typed `Kind.LOSS`, each naming the network it trains): the
  `StepAccumulator` records the first non-finite one on the device. A non-finite parameter of a trained network
  makes the very next loss non-finite, so this catches a blow-up of the trained networks one step after it;
- every `train.finite_check_every_steps` steps, every floating-point parameter and buffer of every network of
  the method, also on the device (`after_step`): what no loss looks at, i.e. Generalist's averaged networks
  (S_R, S_N and the shipped G) and BatchNorm statistics;
- right before a checkpoint is written, the same on the host (`check_networks`), with the optimiser state
  (momentum buffers) too: the guarantee that last.pt / best.pt never receive poisoned weights.
The first two are read at the training loop's boundaries (a logged step, a checkpoint, the end of an epoch)
with the step metrics, in their one copy (`check`); the error still names the step where the failure happened,
which the device recorded, and training stops before the checkpoint that follows.

Under fp16 a dynamic loss scaler skips the steps whose gradients overflow; a method reports that with a
`Kind.SKIPPED_STEPS` metric (the optimiser steps it skipped in the step). Such a step's non-finite loss is
expected: it is counted and reported, not treated as a failure.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .engine.step_metrics import Snapshot, StepAccumulator
from .errors import TrainerError

log = logging.getLogger(__name__)

# The name of the parameter check in the StepAccumulator's records.
PARAMETER_CHECK = "parameters"


class NonFiniteError(TrainerError, FloatingPointError):
    """Training produced a NaN or Inf; the run was stopped before that state was checkpointed."""


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


def network_tensors(networks: Mapping[str, nn.Module]) -> list[tuple[str, str, torch.Tensor]]:
    """(network, tensor name, tensor) of every floating-point parameter and buffer, in a fixed order."""
    return [(net_name, name, t.detach()) for net_name, net in networks.items()
            for name, t in [*net.named_parameters(), *net.named_buffers()] if t.is_floating_point()]


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

    def after_step(self, steps: StepAccumulator, *, step: int, networks: Mapping[str, nn.Module]) -> None:
        """Every `every_steps` steps, check every network tensor on the device into `steps` (no host read)."""
        if not (self.every_steps and step % self.every_steps == 0):
            return
        tensors = network_tensors(networks)
        if not tensors:
            return
        finite = torch.stack([torch.isfinite(t).all() for _, _, t in tensors])  # (T,) bool
        steps.record_check(PARAMETER_CHECK, ~finite, step)

    def check(self, snapshot: Snapshot, *, epoch: int, networks: Mapping[str, nn.Module]) -> None:
        """At a boundary, from the one read of the step metrics: report skipped steps; raise on a non-finite loss
        or a failed parameter check (the earlier of the two)."""
        if snapshot.new_skipped:
            self.skipped_steps += snapshot.new_skipped
            span = (f"step {snapshot.step}" if snapshot.unread_from >= snapshot.step
                    else f"steps {snapshot.unread_from}-{snapshot.step}")
            log.info("%s (epoch %d): the loss scaler skipped %d optimiser step(s) with non-finite gradients; "
                     "%d skipped so far", span, epoch, snapshot.new_skipped, self.skipped_steps)
        loss, params = snapshot.non_finite, snapshot.checks.get(PARAMETER_CHECK)
        if loss is not None and (params is None or loss.step <= params.step):
            self._fail(f"non-finite {loss.metric} = {loss.value}", loss.step, epoch,
                       loss.network or "the method's combined objective")
        if params is not None:
            self._fail_parameter(params.step, params.index, epoch, snapshot.step, networks)

    def _fail_parameter(self, step: int, index: int, epoch: int, read_step: int,
                        networks: Mapping[str, nn.Module]) -> None:
        # The listing is the same at every check of a run (same modules, same order), so the index names it.
        net_name, tensor_name, tensor = network_tensors(networks)[index]
        # Counted now (a host read, at a boundary); after the failing step the tensor may have changed since.
        counted = "" if read_step == step else f", counted at step {read_step}"
        self._fail(f"non-finite parameter '{tensor_name}' ({describe_non_finite(tensor)}{counted})", step, epoch,
                   net_name)

    def check_networks(self, *, step: int, epoch: int, networks: Mapping[str, nn.Module],
                       optimizers: Mapping[str, torch.optim.Optimizer] | None = None) -> None:
        """Every floating-point parameter and buffer of every network (and optimiser state, if given), on the host."""
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
