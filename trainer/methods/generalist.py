"""Generalist: bi-expert adversarial training (H. Wang, Y. Wang, CVPR 2023, arXiv 2303.13813).

Five networks share ONE initialisation: the robust expert theta_R (trained on PGD inputs only), the
natural expert theta_N (clean inputs only), their moving averages S_R and S_N, and the global learner G,
an average of the mix beta * S_R + (1 - beta) * S_N. In sync epochs G is copied back into both experts.
G is the model that is evaluated, selected and shipped.

Each network keeps its floating-point parameters and buffers (BatchNorm statistics included) in one
contiguous arena, so the averaging, mixing and redistribution of a step are one kernel pass over the
flat buffers, instead of the authors' per-key state_dict rebuilds (spec/generalist.md).
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from ...kernels import FlatArena, generalist_average_
from ..config import GeneralistConfig, RunConfig
from ..distributed import average_buffers_
from ..engine import Engine, LossScaler, draw_update_seed, independent_rng, phase
from ..engine.step_metrics import StepMetrics, for_network, loss_metric, mean_metric, skipped_metric
from ..objectives import CleanObjective, Objective, build_objective
from ..optim import set_lr
from ..registry import METHODS
from .base import Method, ModelFactory, attack_metrics
from .generalist_schedule import distorted_sync_warning, ema_decay, is_sync_epoch, mix_beta, sync_steps_of_epoch
from .objective_driven import ObjectiveDriven

log = logging.getLogger(__name__)


def pack_integer_buffers(arenas: list[FlatArena]) -> torch.Tensor | None:
    """(len(arenas), K) int64 holding every arena's integer buffers (BatchNorm's num_batches_tracked), one row per
    arena, K their total size; each module's buffer becomes a view into its row (values kept), so in-place updates,
    state_dict() and load_state_dict() keep working. None when the networks have no integer buffer."""
    keys = list(arenas[0].int_buffers)
    if not keys:
        return None
    first = arenas[0].int_buffers
    for key, t in first.items():
        if t.dtype != torch.int64:
            raise TypeError(f"pack_integer_buffers: buffer {key} is {t.dtype}; expected int64 (a BatchNorm counter)")
    width = sum(t.numel() for t in first.values())
    packed = torch.empty((len(arenas), width), dtype=torch.int64, device=next(iter(first.values())).device)
    with torch.no_grad():
        for row, arena in enumerate(arenas):
            offset = 0
            for key in keys:
                t = arena.int_buffers[key]
                view = packed[row, offset:offset + t.numel()].view(t.shape)
                view.copy_(t)
                t.data = view  # in place: the module, the arena and any other holder now see the packed storage
                offset += t.numel()
    return packed


@METHODS.register("generalist", supports_ducat=True, graph_capturable=True)
class Generalist(ObjectiveDriven, Method):
    """The robust expert trains `objective` (any robust objective: attack, loss, step), the natural expert
    `natural_objective` (cross-entropy on clean inputs; DUCAT's clean target under DUCAT)."""

    name = "generalist"

    def __init__(self, model_factory: ModelFactory, objective: Objective, gcfg: GeneralistConfig, engine: Engine, *,
                 epochs: int, seed: int = 0, natural_objective: CleanObjective | None = None):
        super().__init__(engine, epochs=epochs, seed=seed)
        self.gcfg = gcfg
        self.objective = objective
        self.natural_objective = natural_objective if natural_objective is not None else CleanObjective()
        # In the engine's memory format before the copies and the arenas (which keep each tensor's layout).
        origin = self.engine.place(objective.model_factory(model_factory)().to(self.device))
        bind = getattr(objective, "bind", None)
        if bind is not None:
            bind(origin)  # DUCAT: all five networks share the 2C head; C read from it
        self.robust = origin
        self.natural = copy.deepcopy(origin)
        self.avg_robust = copy.deepcopy(origin)
        self.avg_natural = copy.deepcopy(origin)
        self.global_model = copy.deepcopy(origin)
        for averaged in (self.avg_robust, self.avg_natural, self.global_model):
            averaged.requires_grad_(False)
            averaged.eval()
        # Built after .to(device): the modules' tensors become views into one buffer per network.
        self.arenas = {name: FlatArena(net) for name, net in self._five().items()}
        # The integer buffers of all five, rows in _five() order, as views into one tensor (None without any).
        self.int_counters = pack_integer_buffers(list(self.arenas.values()))
        # What each expert's forwards run through: the expert, or its torch.compile wrapper (engine.compile);
        # the attack uses robust_run. What each expert's training forward (the one followed by backward) runs
        # through: the same, or the expert's DDP wrapper under torchrun (enable_data_parallel).
        self.robust_run: nn.Module = self.engine.compiled(self.robust)
        self.natural_run: nn.Module = self.engine.compiled(self.natural)
        self.robust_train: nn.Module = self.robust_run
        self.natural_train: nn.Module = self.natural_run
        self.robust_optimizer = self.engine.optimizer(self.robust.parameters(), self.gcfg.robust_optim)
        self.natural_optimizer = self.engine.optimizer(self.natural.parameters(), self.gcfg.natural_optim)
        # One fp16 loss scale per expert: independent losses, and under two streams steps on different streams.
        self.robust_scaler = self.engine.loss_scaler()
        self.natural_scaler = self.engine.loss_scaler()
        # The two expert updates: concurrent on two CUDA streams (engine.two_streams) or one after the other.
        self.streams = self.engine.expert_streams()
        # Issue order of the sequential path; the updates are independent, so both orders give the same step.
        self.update_order = "robust_first"
        # engine.cuda_graphs: both updates captured as one graph and replayed; the averaging stays eager.
        self.graphed_step = self.engine.graphed(self._graph_updates, [self.robust_optimizer, self.natural_optimizer])
        self.epoch = 1
        self.beta = 1.0
        self.sync_epoch = False
        self.steps_per_epoch: int | None = None  # set_epoch_length; needed by sync_mode windows
        # Global steps of the current epoch after which G is copied into the experts (every_step, windows).
        self.sync_steps: frozenset[int] = frozenset()

    @classmethod
    def from_config(cls, cfg: RunConfig, model_factory: ModelFactory, device: torch.device) -> Generalist:
        engine = Engine(cfg, device)
        objective = build_objective(cfg.method.generalist.robust_objective, cfg, engine)
        natural = objective.natural() if hasattr(objective, "natural") else None  # DUCAT's clean target
        method = cls(model_factory, objective, cfg.method.generalist, engine, epochs=cfg.train.epochs,
                     seed=cfg.train.seed, natural_objective=natural)
        method.cfg = cfg
        note = distorted_sync_warning(cfg.train.epochs, cfg.method.generalist)
        if note is not None:
            # On stdout with the run's other lines (info): stderr stays for errors, one line each.
            log.info("note: %s", note)
        return method

    @property
    def robust_attack(self):
        return self.objective.attack

    def _five(self) -> dict[str, nn.Module]:
        return {"robust": self.robust, "natural": self.natural, "avg_robust": self.avg_robust,
                "avg_natural": self.avg_natural, "global": self.global_model}

    def networks(self) -> dict[str, nn.Module]:
        return self._five()

    def enable_data_parallel(self) -> None:
        """Only the two experts learn by gradient; S_R, S_N and G follow from them by the same arithmetic
        on every rank, so they need no wrapper to stay identical."""
        self.robust_train = self.data_parallel_forward(self.robust, "robust")
        self.natural_train = self.data_parallel_forward(self.natural, "natural")
        self.data_parallel = True

    def loss_scalers(self) -> dict[str, LossScaler]:
        return {"robust": self.robust_scaler, "natural": self.natural_scaler}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"robust": self.robust_optimizer, "natural": self.natural_optimizer}

    def eval_models(self) -> dict[str, nn.Module]:
        return self.objective.eval_models({"global": self.global_model, "robust": self.robust,
                                           "natural": self.natural})

    def start_epoch(self, epoch: int) -> dict[str, float]:
        total = self.epochs
        self.epoch = epoch
        lr_r = self.gcfg.robust_optim.lr.at(epoch, total)
        lr_n = self.gcfg.natural_optim.lr.at(epoch, total)
        set_lr(self.robust_optimizer, lr_r)
        set_lr(self.natural_optimizer, lr_n)
        self.beta = mix_beta(epoch, total, self.gcfg)
        self.sync_epoch = is_sync_epoch(epoch, total, self.gcfg)
        if self.gcfg.sync_mode == "windows":
            if self.steps_per_epoch is None:
                raise ValueError("Generalist: sync_mode 'windows' needs the steps per epoch; call "
                                 "set_epoch_length(steps) before start_epoch")
            batches = sync_steps_of_epoch(epoch, total, self.steps_per_epoch, self.gcfg)
            self.sync_steps = frozenset((epoch - 1) * self.steps_per_epoch + b for b in batches)
            sync = len(batches) / self.steps_per_epoch  # the fraction of this epoch's steps that redistribute
        else:
            self.sync_steps = frozenset()
            sync = float(self.sync_epoch)
        return {"lr_robust": lr_r, "lr_natural": lr_n, "beta": self.beta, "sync": sync,
                **self.objective.start_epoch(epoch, total)}

    def set_epoch_length(self, steps: int) -> None:
        self.steps_per_epoch = steps

    def _robust_update(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None) -> StepMetrics:
        """The robust expert's attack and optimiser step; reads only x, y (index: the rows' dataset indices, for an
        objective with per-sample state) and the robust expert's own state."""
        with phase("robust_update"):
            with self.engine.autocast():
                # The objective's attack (eval mode inside: BatchNorm running statistics untouched), then its loss.
                loss, metrics = self.objective(self.robust_run, self.robust_train, x, y, index)
            skipped = self.robust_scaler.update(loss, self.robust_optimizer)
        out: StepMetrics = {"robust_loss": loss_metric(loss, "robust"),
                            **{f"robust_{k}": v for k, v in for_network(metrics, "robust").items()}}
        out.update(attack_metrics(self.robust_attack))
        if self.robust_scaler.enabled:
            out["skipped_steps"] = skipped_metric(skipped)
        return out

    def _natural_update(self, x: torch.Tensor, y: torch.Tensor) -> StepMetrics:
        """The natural expert's optimiser step on clean x; reads only x, y and the natural expert's own state."""
        with phase("natural_update"):
            with self.engine.autocast():
                loss, natural_metrics = self.natural_objective.loss(self.natural_train, x, y)
                acc = natural_metrics["acc"]
            skipped = self.natural_scaler.update(loss, self.natural_optimizer)
        out: StepMetrics = {"natural_loss": loss_metric(loss, "natural"), "natural_acc": acc}
        if self.natural_scaler.enabled:
            out["skipped_steps"] = skipped_metric(skipped)
        return out

    @staticmethod
    def _merge(robust: StepMetrics, natural: StepMetrics) -> StepMetrics:
        merged = {**robust, **natural}
        if "skipped_steps" in robust:  # fp16: optimiser steps the two loss scalers skipped in this iteration
            merged["skipped_steps"] = skipped_metric(robust["skipped_steps"].value + natural["skipped_steps"].value)
        return merged

    def expert_updates(self, x: torch.Tensor, y: torch.Tensor, *, order: str = "robust_first",
                       index: torch.Tensor | None = None) -> StepMetrics:
        """Both experts' updates of one iteration, independent until the averaging (trainer/engine/streams.py):
        the natural one on generators seeded from one global draw, so that which runs first, or running them
        concurrently on two CUDA streams, changes nothing."""
        seed = draw_update_seed()

        def natural() -> StepMetrics:
            with independent_rng(seed, self.device):
                return self._natural_update(x, y)

        robust_metrics, natural_metrics = self.streams.run(lambda: self._robust_update(x, y, index), natural,
                                                           inputs=(x, y), order=order)
        return self._merge(robust_metrics, natural_metrics)

    def _graph_updates(self, x: torch.Tensor, y: torch.Tensor) -> StepMetrics:
        # Captured by a CUDA graph: generators cannot be reseeded inside a capture, so the natural update draws
        # from the global generators like the robust one (its numbers differ from the eager path's then).
        robust_metrics, natural_metrics = self.streams.run(lambda: self._robust_update(x, y),
                                                           lambda: self._natural_update(x, y), inputs=(x, y))
        return self._merge(robust_metrics, natural_metrics)

    def average_and_mix(self, decay: float, redistribute: bool) -> None:
        """S <- d S + (1-d) theta for both experts, G <- d G + (1-d) mix, optionally experts <- G."""
        a = self.arenas
        generalist_average_(a["robust"].flat, a["natural"].flat, a["avg_robust"].flat, a["avg_natural"].flat,
                            a["global"].flat, decay=decay, beta=self.beta, redistribute=redistribute)
        self._average_integer_buffers(decay, redistribute)

    def _average_integer_buffers(self, decay: float, redistribute: bool) -> None:
        # The authors mix every state_dict entry, BatchNorm's step counter included; an integer tensor
        # cannot hold the fractional mix, so it is mixed in float64 and rounded to the nearest integer.
        # All counters of the five networks are one (5, K) tensor: a fixed handful of ops whatever the number
        # of BatchNorm layers (per buffer it was ~23 ops each, 460 for a ResNet-18), the same float64
        # arithmetic in the same order, so the same integers.
        counters = self.int_counters
        if counters is None:
            return
        mixed = counters.double()  # (5, K): theta_R, theta_N, S_R, S_N, G
        averages = decay * mixed[2:4] + (1 - decay) * mixed[0:2]  # (2, K): new S_R, S_N
        new_g = decay * mixed[4] + (1 - decay) * (self.beta * averages[0] + (1 - self.beta) * averages[1])
        counters[2:].copy_(torch.cat([averages, new_g[None]]).round_())
        if redistribute:
            counters[:2].copy_(counters[4].expand(2, -1))

    def redistribute(self) -> None:
        """theta_R <- G and theta_N <- G (parameters and buffers); optimiser momentum is kept."""
        self.arenas["robust"].copy_from(self.arenas["global"])
        self.arenas["natural"].copy_from(self.arenas["global"])

    def device_step(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None) -> StepMetrics:
        x = self.engine.prepare(x)
        if self.graphed_step is not None:  # never with an objective that needs `index` (not graph-capturable)
            metrics = self.graphed_step(x, y)
        else:
            metrics = self.expert_updates(x, y, order=self.update_order, index=index)
        if self.data_parallel:
            # The parameters already agree (DDP averaged the gradients); the BatchNorm statistics each rank
            # gathered from its slice are averaged too, so S_R, S_N and G come out the same on every rank.
            average_buffers_(self.robust, self.natural)
        decay = ema_decay(self.global_step, self.gcfg)
        if self.gcfg.sync_mode == "windows":
            sync_now = self.global_step in self.sync_steps  # a host set: no device read
        else:
            sync_now = self.sync_epoch and self.gcfg.sync_mode == "every_step"
        with phase("averaging"):
            self.average_and_mix(decay, redistribute=sync_now)
        self.global_step += 1
        return {**metrics, "decay": mean_metric(decay)}

    def end_epoch(self, epoch: int) -> None:
        if self.sync_epoch and self.gcfg.sync_mode == "epoch_end":
            self.redistribute()
