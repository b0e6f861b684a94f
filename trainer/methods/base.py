"""The contract every training method fulfils; the training loop talks only to this."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from torch import nn

from ..config import OptimConfig, RunConfig
from ..distributed import average_buffers_, data_parallel, rank, world_size
from ..engine import Engine, LossScaler, phase
from ..engine.step_metrics import StepMetrics, for_network, host_values, loss_metric, mean_metric, skipped_metric
from ..engine.streams import RankRandomForward
from ..objectives.base import batch_accuracy, cross_entropy  # noqa: F401  (re-exported for the methods)
from ..optim import set_lr

ModelFactory = Callable[[], nn.Module]


class Method(ABC):
    """A training method owns its networks, optimisers and step counter.

    `networks()` and `optimizers()` list everything a checkpoint must hold; `eval_models()` lists the
    models to evaluate, the first being the one that is shipped and selected on the validation split.
    All of them are the plain modules, never a DDP wrapper (checkpoints hold the unwrapped weights).
    """

    name: str = ""

    def __init__(self, engine: Engine, *, epochs: int, seed: int = 0):
        """`engine`: how the steps run on the device (precision, memory format, streams, graphs, compile;
        trainer/engine/); `epochs`: the run's length the schedules are fractions of; `seed`: the run seed the
        per-rank dropout generators derive from under torchrun."""
        self.engine = engine
        self.device = engine.device
        self.epochs = epochs
        self.seed = seed
        self.global_step = 0
        # True once enable_data_parallel() wrapped the trained networks (torchrun, world size > 1).
        self.data_parallel = False
        # The run config `from_config` built the method from (None when built from objects); read by no step.
        self.cfg: RunConfig | None = None

    @classmethod
    def from_config(cls, cfg: RunConfig, model_factory: ModelFactory, device: torch.device) -> Method:
        """The method a run config describes: the global config is read here, at the edge, and nowhere else."""
        raise NotImplementedError(f"method '{cls.name}' has no from_config")

    def enable_data_parallel(self) -> None:
        """Train under torchrun: wrap the networks trained by gradient in DistributedDataParallel for their
        training forward / backward, and average their BatchNorm statistics over ranks after each step
        (trainer/distributed.py says why). Call once the process group exists and every rank holds the
        same weights (after a resume has loaded them)."""
        raise NotImplementedError(f"method '{self.name}' does not support data-parallel training")

    def data_parallel_forward(self, module: nn.Module, name: str) -> nn.Module:
        """What a network's training forward runs through under torchrun: its DDP wrapper (compiled under
        engine.compile), and with more than one process on random generators of this rank's own, so that
        dropout masks differ between the ranks' slices (trainer/engine/streams.py RankRandomForward)."""
        wrapped = self.engine.compiled(data_parallel(module, self.device))
        if world_size() == 1:
            return wrapped
        return RankRandomForward(wrapped, name=name, rank=rank(), seed=self.seed, device=self.device,
                                 step=lambda: self.global_step)

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
    def device_step(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None) -> StepMetrics:
        """One optimisation step on a batch of [0,1] inputs; its metrics stay on the device, typed (what the
        training loop calls: no host read inside the step, trainer/engine/step_metrics.py). `index` (N,) int64 on
        the device: the rows' dataset indices, given when `needs_sample_index` (else None)."""

    def train_step(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None) -> dict[str, float]:
        """`device_step`, then its metrics as floats: one device-to-host copy, which waits for the step to finish."""
        return host_values(self.device_step(x, y, index))

    @property
    def needs_sample_index(self) -> bool:
        """Whether `device_step` needs the batch's dataset indices (an objective with per-sample state: IAT;
        trainer/methods/objective_driven.py)."""
        return False

    def set_training_size(self, num_samples: int) -> None:
        """The training set's size (dataset indices 0 .. num_samples - 1), for per-sample state."""

    def set_epoch_length(self, steps: int) -> None:
        """Training steps per epoch, for schedules finer than an epoch (Generalist's sync windows)."""

    def training_attacks(self) -> list:
        """The attacks the training step runs (their random starts follow `set_sample_window`)."""
        return []

    def set_sample_window(self, offset: int, total: int) -> None:
        """Under torchrun: this rank's batches are rows [offset, offset + n) of global batches of `total` rows.
        The training attacks then draw each sample's random start by its global row, so that the ranks' starts
        differ and together equal one process's on the global batch (trainer/attacks/base.py)."""
        for attack in self.training_attacks():
            attack.set_sample_window(offset, total)

    def end_epoch(self, epoch: int) -> None:
        """Hook after the last step of an epoch."""

    def selectable_epoch(self, epoch: int) -> bool:
        """Whether the model at the end of this 1-based epoch may become best.pt. True, unless the method
        switches to another objective late in the run (DUCAT): then only epochs trained with it compete."""
        return True

    def loss_scalers(self) -> dict[str, LossScaler]:
        """The fp16 loss scalers by optimiser name (their scale is training state a resume must restore)."""
        return {}

    def extra_state(self) -> dict:
        state: dict = {"global_step": self.global_step}
        scalers = {name: s.state_dict() for name, s in self.loss_scalers().items() if s.enabled}
        if scalers:
            state["loss_scalers"] = scalers
        return state

    def load_extra_state(self, state: dict) -> None:
        self.global_step = int(state["global_step"])
        saved = state.get("loss_scalers", {})
        for name, scaler in self.loss_scalers().items():
            scaler.load_state_dict(saved.get(name, {}))


def attack_metrics(attack: object) -> StepMetrics:
    """The attack's diagnostics of its last call, for the step metrics (PGD: fraction of zero input gradients)."""
    fraction = getattr(attack, "zero_grad_fraction", None)
    return {"attack_zero_grad_fraction": mean_metric(fraction)} if isinstance(fraction, torch.Tensor) else {}


class SingleNetworkMethod(Method):
    """One network, one SGD optimiser, a per-epoch lr schedule; the batch loss comes from `loss`."""

    # The phase (trainer/engine/phases.py) a step's loss, backward and optimiser step are counted in.
    update_phase = "robust_update"

    def __init__(self, model_factory: ModelFactory, optim: OptimConfig, engine: Engine, *, epochs: int,
                 seed: int = 0):
        super().__init__(engine, epochs=epochs, seed=seed)
        self.model = self.engine.place(model_factory().to(self.device))
        # What forwards run through: the model, or its torch.compile wrapper (engine.compile); attacks use this.
        self.run_model: nn.Module = self.engine.compiled(self.model)
        # What the training forward (the one followed by backward) runs through: run_model, or the model's
        # DDP wrapper under torchrun. Attacks never get the DDP wrapper.
        self.train_model: nn.Module = self.run_model
        self.optim_cfg: OptimConfig = optim
        self.optimizer = self.engine.optimizer(self.model.parameters(), self.optim_cfg)
        self.scaler = self.engine.loss_scaler()
        # engine.cuda_graphs: the whole step captured once and replayed (trainer/engine/cuda_graphs.py).
        self.graphed_step = self.engine.graphed(self._step, [self.optimizer])

    def enable_data_parallel(self) -> None:
        self.train_model = self.data_parallel_forward(self.model, "model")
        self.data_parallel = True

    def loss_scalers(self) -> dict[str, LossScaler]:
        return {"model": self.scaler}

    def networks(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"model": self.optimizer}

    def eval_models(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def start_epoch(self, epoch: int) -> dict[str, float]:
        lr = self.optim_cfg.lr.at(epoch, self.epochs)
        set_lr(self.optimizer, lr)
        return {"lr": lr}

    @abstractmethod
    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, StepMetrics]:
        """The batch loss with the model in train mode, and typed metrics to log (0-dim device tensors: no host
        sync inside the step; a loss term among them is a `loss_metric`). The forward that backward()
        differentiates runs through `self.train_model`, attacks through `self.run_model`. Runs under the
        engine's autocast; an attack inside marks itself with `phase("attack")`."""

    def step_attack(self) -> object | None:
        """The attack whose diagnostics the step metrics report (None: no attack)."""
        return None

    def _step(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None) -> StepMetrics:
        """Loss, backward, optimiser step; metrics stay on the device (the CUDA-graph-captured function)."""
        with phase(self.update_phase):
            with self.engine.autocast():
                loss, metrics = self.loss(x, y) if index is None else self.loss(x, y, index)
            # Under DDP the backward also averages the gradients over ranks.
            skipped = self.scaler.update(loss, self.optimizer)
        out: StepMetrics = {"loss": loss_metric(loss, "model"), **for_network(metrics, "model")}
        out.update(attack_metrics(self.step_attack()))
        if self.scaler.enabled:
            out["skipped_steps"] = skipped_metric(skipped)
        return out

    def device_step(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None) -> StepMetrics:
        x = self.engine.prepare(x)
        # An objective that needs `index` is not graph-capturable (the config refuses engine.cuda_graphs with it).
        metrics = self.graphed_step(x, y) if self.graphed_step is not None else self._step(x, y, index)
        if self.data_parallel:
            average_buffers_(self.model)
        self.global_step += 1
        return metrics
