"""The static-shape training step (attack + optimiser updates) captured as one CUDA graph and replayed.

A PGD-10 iteration launches hundreds of small kernels; at CIFAR sizes the host's launch overhead, not the
GPU, sets the pace. Captured once, the whole iteration is one graph launch.

How (torch's "whole network capture" recipe):
- the step is a function (x, y) -> typed metrics of 0-dim tensors (StepMetrics) that never reads a value on the host
  (no .item(), no float(tensor), no data-dependent Python branch), so it can be captured;
- the first `warmup_steps` calls run it eagerly on a side stream, on the real batches (they are real training
  steps): cuDNN autotuning, the lazy optimiser state (momentum buffers) and autocast all settle there;
- the next call copies its batch into static input buffers, captures the step into a graph with the
  gradients set to None first (so backward allocates them from the graph's private pool), then replays it;
  every later call with the same batch shape, dtype and layout copies its batch in and replays;
- a batch of another shape (a last partial batch) runs the same function eagerly instead.
What the capture requires of the rest of the engine (resolved in trainer/engine/settings.py and config.py):
- learning rates are device tensors (`trainer/optim.py`, capturable=True), changed in place by set_lr, so
  the schedule reaches a graph that baked no host float; momentum and weight decay are constant;
- autocast with its weight cache disabled; no fp16 loss scaler (GradScaler's step is not documented as
  capturable, and its bookkeeping per optimiser runs in Python, which a replay skips);
  no DDP, no DUCAT, no TRADES (their losses read metrics on the host);
- the attack's random start drawn from the default CUDA generator (graph-safe: each replay advances its
  Philox offset), not from a host-drawn seed that the capture would freeze (`GraphSafePGD`); and no
  host-side range check of the inputs (the loaders guarantee [0, 1]).
The averaging of Generalist runs after the replay, eagerly: its decay changes every step as a host float,
and it is a single kernel launch anyway.

Unverified: written without a GPU. The CPU tests check the configuration errors and that the eager path of
this module (shape fallback) calls the same function; the capture itself is exercised only on CUDA
(tests/engine/test_cuda_graphs.py, skipped without one).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..attacks.base import eval_mode
from ..attacks.pgd import PGD, l2_random_start
from .step_metrics import StepMetrics

StepFn = Callable[[torch.Tensor, torch.Tensor], StepMetrics]


class GraphSafePGD(PGD):
    """PGD whose random start comes from the default device generator and whose call reads nothing on the
    host, so that a CUDA graph can capture it; otherwise the same attack (same projection and step kernels)."""

    def start(self, x: torch.Tensor) -> torch.Tensor:
        if not self.random_start or self.eps == 0:
            return x.clone()
        if self.norm == "linf":
            noise = torch.empty_like(x).uniform_(-self.eps, self.eps)
            return (x + noise).clamp_(0.0, 1.0)
        return l2_random_start(x, self.eps, None)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = x.detach()
        with eval_mode(model), torch.enable_grad():
            x_adv = self.perturb(model, x, y)
        return x_adv.detach()


def _signature(x: torch.Tensor, y: torch.Tensor) -> tuple:
    return (tuple(x.shape), x.stride(), x.dtype, x.device, tuple(y.shape), y.dtype)


class GraphedStep:
    """Calls `step(x, y)`: eagerly for the warm-up calls, then as a captured CUDA graph; see the module doc.

    The returned tensors of a replay are the graph's static outputs, overwritten by the next replay: use them
    (the training loop's StepAccumulator copies them on the device, in stream order) before calling again.
    """

    def __init__(self, step: StepFn, optimizers: list[torch.optim.Optimizer], device: torch.device,
                 warmup_steps: int):
        if device.type != "cuda":
            raise ValueError(f"GraphedStep: CUDA graphs need a CUDA device, got {device}")
        if warmup_steps < 1:
            raise ValueError(f"GraphedStep: warmup_steps = {warmup_steps}, expected >= 1")
        self.step = step
        self.optimizers = optimizers
        self.device = device
        self.warmup_steps = warmup_steps
        self.calls = 0
        self.eager_fallbacks = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self._signature: tuple | None = None
        self._static_x: torch.Tensor | None = None
        self._static_y: torch.Tensor | None = None
        self._static_out: StepMetrics = {}
        self._side = torch.cuda.Stream(device)

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def _eager_on_side_stream(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        # Warm-up away from the default stream, as the capture will be (torch's recipe): the lazy
        # initialisations then happen on the kind of stream the graph runs on.
        main = torch.cuda.current_stream(self.device)
        self._side.wait_stream(main)
        with torch.cuda.stream(self._side):
            out = self.step(x, y)
        main.wait_stream(self._side)
        x.record_stream(self._side)
        y.record_stream(self._side)
        for metric in out.values():
            if isinstance(metric.value, torch.Tensor):
                metric.value.record_stream(main)
        return out

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self._static_x = torch.empty_like(x)  # same shape, dtype and memory format as the batches
        self._static_y = torch.empty_like(y)
        self._static_x.copy_(x)
        self._static_y.copy_(y)
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)  # backward allocates .grad from the graph's pool
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize(self.device)
        with torch.cuda.graph(graph):
            self._static_out = self.step(self._static_x, self._static_y)
        self.graph = graph
        self._signature = _signature(x, y)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> StepMetrics:
        self.calls += 1
        if self.graph is None:
            if self.calls <= self.warmup_steps:
                return self._eager_on_side_stream(x, y)
            self._capture(x, y)  # captures without running: the replay below is this call's step
        elif _signature(x, y) != self._signature:
            self.eager_fallbacks += 1
            return self.step(x, y)
        else:
            self._static_x.copy_(x)
            self._static_y.copy_(y)
        self.graph.replay()
        return self._static_out
