"""One method's engine: the resolved settings and the objects built from them, in the order a method uses them.

A method builds its `Engine` first (`Engine(cfg, device)`), then:
1. `place(module)`: memory format (channels_last) of a freshly built network, BEFORE its FlatArena is built
   (the arena keeps each tensor's own memory order) and before deep copies are made of it;
2. `optimizer(params, optim_cfg)`: SGD by `engine.optimizer_impl`, capturable under CUDA graphs;
3. `compiled(module)`: what the attack and training forwards call (torch.compile'd under `engine.compile`);
4. `train_attack(attack_cfg)`: the training PGD (graph-safe under CUDA graphs; zero-gradient diagnostic);
5. per step: `prepare(x)` (memory format of the batch), `autocast()`, a `LossScaler` per optimiser,
   `ExpertStreams` (Generalist), `graphed(step, optimizers)` (CUDA graphs).
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager

import torch
from torch import nn

from ..attacks import PGD, build_train_attack
from ..config import AttackConfig, OptimConfig, RunConfig
from ..distributed import is_distributed
from ..optim import build_sgd
from .compile import compile_module
from .cuda_graphs import GraphedStep, GraphSafePGD, StepFn
from .precision import LossScaler, Precision
from .settings import EngineSettings, resolve_engine
from .streams import ExpertStreams


class Engine:
    """The engine of one method on one device; see the module docstring for the order of use."""

    def __init__(self, cfg: RunConfig, device: torch.device, *, settings: EngineSettings | None = None):
        self.settings = settings or resolve_engine(cfg, device, distributed=is_distributed())
        self.device = device
        s = self.settings
        self.precision = Precision(s.precision, s.eval_precision, device, graph_safe=s.cuda_graphs)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.settings.channels_last else torch.contiguous_format

    def place(self, module: nn.Module) -> nn.Module:
        """The module in the engine's memory format (in place; 4-D weights only, the rest is unaffected)."""
        if self.settings.channels_last:
            module.to(memory_format=torch.channels_last)
        return module

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """A 4-D batch in the engine's memory format (a no-op when it already is)."""
        if self.settings.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def optimizer(self, params: Iterable[nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
        # Fused under an fp16 loss scale: GradScaler then passes its overflow flag to the kernel, which skips the
        # step on the device, instead of reading the flag on the host (trainer/engine/precision.py).
        params = list(params)
        optimizer = build_sgd(params, cfg, self.device, impl=self.settings.optimizer_impl,
                              capturable=self.settings.cuda_graphs, fused=True if self.settings.loss_scaling else None)
        if self.settings.loss_scaling and cfg.momentum and isinstance(optimizer, torch.optim.SGD):
            # torch's fused SGD allocates the momentum buffers uninitialised (empty_like) on its first step and
            # fills them in the kernel, which a skipped step (fp16 overflow) exits before: the next step would
            # then start from garbage. Zero buffers created here make the first step an ordinary one, and
            # m * 0 + g = g is exactly the first step's buffer (SGD without dampening, as build_sgd builds it).
            for p in params:
                optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return optimizer

    def compiled(self, module: nn.Module) -> nn.Module:
        return compile_module(module, self.settings.compile)

    def train_attack(self, cfg: AttackConfig) -> PGD:
        """The training-time PGD (its randomness from the global generators, which checkpoints capture)."""
        if self.settings.cuda_graphs:
            attack = GraphSafePGD(cfg.eps, cfg.step, cfg.steps, norm=cfg.norm, random_start=cfg.random_start)
        else:
            attack = build_train_attack(cfg)
        attack.zero_grad_every_step = self.settings.attack_zero_grad_every_step
        return attack

    def autocast(self) -> AbstractContextManager:
        return self.precision.autocast()

    def eval_autocast(self) -> AbstractContextManager:
        return self.precision.eval_autocast()

    def loss_scaler(self) -> LossScaler:
        return self.precision.loss_scaler()

    def expert_streams(self) -> ExpertStreams:
        return ExpertStreams(self.device, self.settings.two_streams)

    def graphed(self, step: StepFn, optimizers: list[torch.optim.Optimizer]) -> GraphedStep | None:
        """`step` wrapped for CUDA graph capture, or None when engine.cuda_graphs is off."""
        if not self.settings.cuda_graphs:
            return None
        return GraphedStep(step, optimizers, self.device, self.settings.cuda_graph_warmup_steps)
