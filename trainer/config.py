"""Typed run configuration: one small frozen dataclass per concern, composed in `RunConfig`.

Presets live in `configs/*.yaml`; the CLI applies dotted overrides (`train.epochs=3`); the resolved
config is written into the run folder and into every checkpoint, so a run can always be rebuilt.
Epoch-dependent constants are expressed as fractions of the run so that short runs keep the shape
of the long schedule they were taken from.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

# Training loaders (trainer/data/loaders.py); auto: gpu-resident when CUDA and the dataset fits, else cpu.
LOADERS = ("auto", "cpu", "gpu", "dali", "torch")
# Dataset, model, method and objective names come from trainer/registry.py (asked in validate()).
NORMS = ("linf", "l2")
# pgd_lse: PGD on the logsumexp-fold of a DUCAT head (the adaptive attack, trainer/eval/class_fold.py).
# Process groups of a torchrun launch (train.process_group): torch.distributed's NCCL or gloo.
PROCESS_GROUPS = ("auto", "nccl", "gloo")
EVAL_ATTACKS = ("clean", "pgd", "cw", "autoattack", "pgd_lse")
DUCAT_NATURAL_TARGETS = ("two_hot", "hard")
# AutoAttack versions whose attack list and settings pyautoattack fixes ("custom" needs a list we do not expose).
# "apgd": standard's first two attacks (APGD-CE, APGD-T) with standard's settings; its accuracy is standard's
# after APGD-T, an upper bound on standard's final figure at a fraction of the cost (FAB-T and Square are the
# expensive stages and rarely remove a point on robust models: results/fashion_mnist_table).
AUTOATTACK_VERSIONS = ("standard", "plus", "rand", "apgd")
# Training precision (trainer/engine/precision.py); auto: bf16 autocast on CUDA, fp32 on the CPU.
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
EVAL_PRECISIONS = ("fp32", "bf16", "fp16")
# Optimiser implementation (trainer/optim.py): torch's SGD (fused on CUDA) or apex's FusedSGD.
OPTIMIZER_IMPLS = ("torch", "apex")
# train.threads above this is a typo, not a machine (torch.set_num_threads takes a C int).
MAX_THREADS = 4096
# Keys renamed so that each word means one thing ("backend" named the loader and the process group). A user's
# config file, dict or override with an old key is a ConfigError naming the new one; configs stored by older
# versions (checkpoints, run folders' config.yaml) are moved to the new names where they are read
# (`migrate_stored_config`), so old runs still resume, evaluate and export.
RENAMED_KEYS = {"data.backend": "data.loader", "train.dist_backend": "train.process_group"}


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "fashion-mnist"
    # None: the dataset's default place (Fashion-MNIST: /usr/share/datasets/fashion-mnist).
    data_dir: str | None = None
    # Held out of the training set, seeded; checkpoint selection looks only at this split.
    val_size: int = 5000
    # Use only this many training images (after the validation split); None: all of them.
    train_subset: int | None = None
    batch_size: int = 128
    eval_batch_size: int = 500
    # Random-crop padding in pixels; None: the dataset's default (4 for 32x32, 2 for 28x28).
    crop_padding: int | None = None
    # Horizontal flip; None: the dataset's default (on for CIFAR and Fashion-MNIST, off for digits).
    flip: bool | None = None
    # Synthetic source: number of training / test images and their shape (C, H, W).
    synthetic_train_size: int = 4096
    synthetic_test_size: int = 1024
    synthetic_shape: tuple[int, int, int] = (3, 32, 32)
    synthetic_classes: int = 10
    # Training loader: auto | cpu | gpu (dataset resident on the device) | dali | torch (DataLoader workers).
    loader: str = "auto"
    # Worker processes of the torch loader, CPU threads of the dali loader (at least 1).
    num_workers: int = 4


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "small_cnn"
    # Dropout rate placed as in spec/lipschitz.md (between the convolutions of residual blocks,
    # before the classifier's hidden layer of the small CNN); 0 disables it.
    dropout: float = 0.0
    # Wide ResNet only.
    depth: int = 34
    widen: int = 10


@dataclass(frozen=True)
class AttackConfig:
    """The training-time attack (PGD). eps and step are in pixel space, inputs in [0, 1]."""

    norm: str = "linf"
    eps: float = 8 / 255
    step: float = 2 / 255
    steps: int = 10
    random_start: bool = True


@dataclass(frozen=True)
class Schedule:
    """Piecewise linear in the 1-based integer epoch e; knots are fractions of the run's epochs."""

    knots: tuple[float, ...] = (0.0, 1 / 3, 2 / 3, 1.0)
    values: tuple[float, ...] = (0.01, 0.01, 0.001, 0.0001)

    def at(self, epoch: int, total_epochs: int) -> float:
        xs = [k * total_epochs for k in self.knots]
        if epoch <= xs[0]:
            return float(self.values[0])
        for (x0, v0), (x1, v1) in zip(zip(xs, self.values), zip(xs[1:], self.values[1:])):
            if epoch <= x1:
                return float(v0 + (v1 - v0) * (epoch - x0) / (x1 - x0)) if x1 > x0 else float(v1)
        return float(self.values[-1])


@dataclass(frozen=True)
class OptimConfig:
    lr: Schedule = field(default_factory=Schedule)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False


@dataclass(frozen=True)
class GeneralistConfig:
    """Generalist (Wang & Wang, CVPR 2023); defaults are the authors' schedule (spec/generalist.md)."""

    # Objective of the robust expert: any registered objective (trainer/objectives/), e.g. "pgd_at" or "trades".
    robust_objective: str = "pgd_at"
    # Weight of the robust side in the global learner's mix.
    beta: Schedule = field(default_factory=lambda: Schedule(values=(1.0, 1.0, 1.0, 0.4)))
    # Moving-average decay d_k = min(decay_max, (k + 1) / (k + decay_warmup)).
    decay_max: float = 0.999
    decay_warmup: float = 10.0
    # Redistribution (theta_R, theta_N <- G) in epochs e >= ceil(sync_start * E) with
    # e % max(1, round(sync_period * E)) == 0: 75/120 and 5/120 reproduce epochs 75, 80, ..., 120.
    sync_start: float = 75 / 120
    sync_period: float = 5 / 120
    # "every_step": after every iteration of a sync epoch (the authors' code, our default);
    # "epoch_end": once at the end of each sync epoch;
    # "windows": after every iteration that ends inside a sync window, the authors' sync epochs as fractions of the
    # run: windows of sync_length ending at sync_start, sync_start + sync_period, ..., 1. With E = 120 it is
    # every_step exactly; below ~24 epochs the period rounds to one epoch and every_step redistributes after
    # every step of the last 3/8 of the run (the experts then barely move: G's decay scales their steps by
    # 1 - d), where windows keeps the authors' ten short sync periods with free training between them.
    sync_mode: str = "every_step"
    # Length of each sync window ("windows" only), a fraction of the run: one epoch of the authors' 120.
    sync_length: float = 1 / 120
    robust_optim: OptimConfig = field(default_factory=lambda: OptimConfig(weight_decay=3.5e-3))
    natural_optim: OptimConfig = field(default_factory=lambda: OptimConfig(weight_decay=5e-4))


@dataclass(frozen=True)
class DucatConfig:
    """DUCAT dummy classes (Y. Wang et al., arXiv 2410.12671; spec/ducat.md): a 2C-logit head and soft
    two-hot targets, plugged into pgd_at, trades or Generalist's robust expert."""

    enabled: bool = False
    # The DUCAT loss is active in 1-based epochs e >= ceil(start * E); before that the 2C head trains
    # with the base method's hard labels. 105/130: the authors' epochs 105-130 of 130.
    start: float = 105 / 130
    # Targets of the joint forward of [x; x_adv]: clean x -> clean_true_weight on y and clean_dummy_weight
    # on y + C; x_adv -> adv_dummy_weight on y + C (the authors' w_alpha, 1 by default).
    clean_true_weight: float = 0.75
    clean_dummy_weight: float = 0.25
    adv_dummy_weight: float = 1.0
    # Generalist only, the natural expert's target while DUCAT is active: "two_hot" (the clean target
    # above, as the robust expert's clean half) or "hard" (cross-entropy on y over the 2C logits).
    natural_target: str = "two_hot"


@dataclass(frozen=True)
class MartConfig:
    """MART (Wang et al., ICLR 2020; trainer/objectives/mart.py): boosted CE + beta * (1 - p_y(x)) weighted KL."""

    # The authors' default weight of the KL term.
    beta: float = 6.0


@dataclass(frozen=True)
class FatConfig:
    """Friendly AT (Zhang et al., ICML 2020; trainer/objectives/fat.py): early-stopped PGD."""

    # Steps each sample continues after it is first misclassified. Defaults: the authors' FAT.py
    # (github.com/zjfheart/Friendly-Adversarial-Training, CIFAR-10, 120 epochs): --tau 0 with --dynamictau on, i.e.
    # tau 0 for epochs 1-50, 1 for 51-90, 2 for 91-120. dynamic_tau adds 1 past 50/120 and 2 past 90/120 of the run
    # to tau (the authors' flag replaces their tau by 0, 1, 2: the same at tau 0); false keeps tau all run.
    tau: int = 0
    dynamic_tau: bool = True


@dataclass(frozen=True)
class IatConfig:
    """Instance-adaptive AT (Balaji et al., arXiv 1910.08051; trainer/objectives/iat.py): one eps per training sample.

    Defaults are the authors' CIFAR-10 config (eps 8/255, 110 epochs); gamma is in pixel space like attack.eps."""

    # Epochs at the fixed attack.eps (0 on clean-misclassified samples) before the per-sample update starts.
    warmup_epochs: int = 10
    # Exploration step: each visit probes eps_i + gamma and steps eps_i up, keeps it, or steps it down by gamma.
    gamma: float = 1.9 / 255
    # Weight of the new value: eps_i <- beta * new + (1 - beta) * eps_i.
    beta: float = 0.1
    # Cap on eps_i (ours; null: none, as the authors' code).
    max_eps: float | None = None


@dataclass(frozen=True)
class MethodConfig:
    name: str = "generalist"
    trades_beta: float = 6.0
    # RST(beta) = CE(x) + beta CE(x_adv) (trainer/methods/rst.py); 1: clean and adversarial weigh the same.
    rst_beta: float = 1.0
    generalist: GeneralistConfig = field(default_factory=GeneralistConfig)
    ducat: DucatConfig = field(default_factory=DucatConfig)
    mart: MartConfig = field(default_factory=MartConfig)
    fat: FatConfig = field(default_factory=FatConfig)
    iat: IatConfig = field(default_factory=IatConfig)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 120
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    out_dir: str = "runs/default"
    # Also write a checkpoint every this many steps (0: only at the end of each epoch).
    checkpoint_every_steps: int = 0
    # Check every parameter and buffer for NaN/Inf every this many steps (0: only before each checkpoint,
    # where it always happens); losses are checked every step. Why not every step: trainer/guards.py.
    finite_check_every_steps: int = 100
    log_every_steps: int = 20
    # Stop after this many optimisation steps in total (None: run all epochs); for tests and smoke runs.
    max_steps: int | None = None
    # Evaluate on the validation split after every epoch with a cheap PGD (for model selection).
    val_points: int = 1000
    val_pgd_steps: int = 10
    # What the best checkpoint maximises on the validation split: "pgd", "clean", or "sum" of both
    # (the default: Generalist's point is the pair, and the sum does not favour either side).
    select_metric: str = "sum"
    deterministic: bool = False
    # torch.set_num_threads; 0 leaves torch's default.
    threads: int = 0
    progress: bool = True
    # Under torchrun (trainer/distributed.py): the process group, "auto" (NCCL on GPUs, gloo on
    # the CPU), "nccl" or "gloo"; and how often (in steps; 0: only at epoch ends) the ranks compare an
    # exact fingerprint of the shipped model to prove they still hold the same one.
    process_group: str = "auto"
    dist_check_every_steps: int = 1


@dataclass(frozen=True)
class EvalConfig:
    num_points: int = 1000
    attacks: tuple[str, ...] = ("clean", "pgd", "cw", "autoattack")
    # None: the training attack's eps.
    eps: float | None = None
    pgd_steps: int = 20
    cw_steps: int = 20
    # Step size as a multiple of eps / steps (2.5 is the usual choice: the attack can cross the ball).
    step_ratio: float = 2.5
    autoattack_version: str = "standard"
    # Points per AutoAttack batch (one unit of resumable work); None: data.eval_batch_size.
    autoattack_batch_size: int | None = None
    # Keep an AutoAttack state file next to the results so an interrupted evaluation resumes.
    autoattack_resume: bool = True
    seed: int = 0
    # Which of the method's models to evaluate (Generalist: global, robust, natural); empty: all of them.
    models: tuple[str, ...] = ()
    # A bar per attack stage on stderr (on a terminal; otherwise a line every 30 s): trainer/eval/progress.py.
    progress: bool = True


@dataclass(frozen=True)
class EngineConfig:
    """How the training step runs on the device (trainer/engine/). A null field means auto, resolved against
    the device and method when the method is built (trainer/engine/settings.py); an explicit request that
    cannot be honoured there (two_streams or cuda_graphs on the CPU, say) is a ConfigError, never a silent
    fallback."""

    # auto | bf16 | fp16 | fp32 autocast of the training step; auto: bf16 on CUDA, fp32 on the CPU. fp16 adds a
    # dynamic loss scaler per optimiser. Losses are computed in fp32 whatever this is.
    precision: str = "auto"
    # Autocast of validation (and evaluation) forwards: fp32 unless asked otherwise.
    eval_precision: str = "fp32"
    # Networks and batches in channels_last memory order; null: on (CUDA and CPU: faster on both). The 3-epoch
    # tables committed before 2026-12 were trained in NCHW: engine.channels_last=false reproduces them exactly.
    channels_last: bool | None = None
    # torch.backends.cudnn.benchmark; null: on for CUDA unless train.deterministic.
    cudnn_benchmark: bool | None = None
    # TF32 tensor cores for fp32 matmuls and convolutions on CUDA (explicit: no auto).
    tf32: bool = True
    # Generalist: the natural expert's step on a second CUDA stream, concurrent with the robust expert's
    # attack; null: on for Generalist on CUDA in a single process.
    two_streams: bool | None = None
    # Capture the static-shape training step (attack + updates) as one CUDA graph; CUDA only.
    cuda_graphs: bool = False
    # Eager steps (on real batches) before the capture: cudnn autotuning, lazy optimiser state.
    cuda_graph_warmup_steps: int = 3
    # torch.compile of the networks' forwards (attack and training); checkpoints keep the plain modules.
    compile: bool = False
    # torch (SGD, fused on CUDA) or apex (apex.optimizers.FusedSGD; needs NVIDIA apex and CUDA).
    optimizer_impl: str = "torch"
    # PGD's fraction of exactly-zero input gradients: on the last step only (cheap) or averaged over all.
    attack_zero_grad_every_step: bool = False


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    # Optimiser of the single-network methods (natural, pgd_at, trades).
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)


# ---------------------------------------------------------------------------------------------
# Validation


def _check(cond: bool, field_name: str, value: Any, expected: str) -> None:
    if not cond:
        raise ConfigError(f"config field '{field_name}' = {value!r}: expected {expected}")


def _check_schedule(s: Schedule, name: str) -> None:
    _check(len(s.knots) == len(s.values) and len(s.knots) >= 1, name, s,
           "as many knots as values, at least one")
    _check(all(0.0 <= k <= 1.0 for k in s.knots), f"{name}.knots", s.knots, "fractions in [0, 1]")
    _check(all(a <= b for a, b in zip(s.knots, s.knots[1:])), f"{name}.knots", s.knots,
           "non-decreasing fractions")
    _check(all(math.isfinite(v) for v in s.values), f"{name}.values", s.values, "finite numbers")


def _check_optim(o: OptimConfig, name: str) -> None:
    _check_schedule(o.lr, f"{name}.lr")
    _check(all(v >= 0 for v in o.lr.values), f"{name}.lr.values", o.lr.values, "learning rates >= 0")
    _check(0.0 <= o.momentum < 1.0, f"{name}.momentum", o.momentum, "a value in [0, 1)")
    _check(o.weight_decay >= 0, f"{name}.weight_decay", o.weight_decay, "a value >= 0")


def _ducat_methods() -> tuple[str, ...]:
    """Method names DUCAT wraps (natural training has no adversarial examples for the dummy classes)."""
    from .registry import method_flag, method_names

    return tuple(n for n in method_names() if method_flag(n, "supports_ducat"))


def _check_ducat(me: MethodConfig) -> None:
    du = me.ducat
    ducat_methods = _ducat_methods()
    _check(not du.enabled or me.name in ducat_methods, "method.ducat.enabled", du.enabled,
           f"false with method.name {me.name!r}: DUCAT sends adversarial examples to dummy classes and plugs "
           f"into {ducat_methods} only")
    _check(not (du.enabled and me.name == "generalist" and me.generalist.robust_objective not in ducat_methods),
           "method.ducat.enabled", du.enabled, f"false with method.generalist.robust_objective "
           f"{me.generalist.robust_objective!r}: DUCAT plugs into {ducat_methods} only")
    _check(math.isfinite(du.start) and 0.0 <= du.start <= 1.0, "method.ducat.start", du.start,
           "a fraction of the run in [0, 1]")
    for name in ("clean_true_weight", "clean_dummy_weight", "adv_dummy_weight"):
        value = getattr(du, name)
        _check(math.isfinite(value) and value >= 0, f"method.ducat.{name}", value, "a finite weight >= 0")
    _check(du.clean_true_weight + du.clean_dummy_weight > 0, "method.ducat.clean_true_weight",
           du.clean_true_weight, "clean_true_weight + clean_dummy_weight > 0 (clean inputs need a target)")
    _check(du.adv_dummy_weight > 0, "method.ducat.adv_dummy_weight", du.adv_dummy_weight,
           "a weight > 0 (0 would drop the adversarial half of the DUCAT loss)")
    _check(du.natural_target in DUCAT_NATURAL_TARGETS, "method.ducat.natural_target", du.natural_target,
           f"one of {DUCAT_NATURAL_TARGETS}")


def validate(cfg: RunConfig) -> RunConfig:
    """Raise ConfigError naming the first invalid field; return cfg unchanged otherwise."""
    from .registry import DATASETS, MODELS, OBJECTIVES, load_registrations, method_names

    load_registrations()
    d, m, a, me, t, e = cfg.data, cfg.model, cfg.attack, cfg.method, cfg.train, cfg.eval
    _check(d.dataset in DATASETS, "data.dataset", d.dataset, f"one of {DATASETS.names()}")
    _check(d.val_size >= 0, "data.val_size", d.val_size, "an integer >= 0")
    _check(d.train_subset is None or d.train_subset > 0, "data.train_subset", d.train_subset,
           "null or an integer > 0")
    _check(d.batch_size > 0, "data.batch_size", d.batch_size, "an integer > 0")
    _check(d.eval_batch_size > 0, "data.eval_batch_size", d.eval_batch_size, "an integer > 0")
    _check(d.crop_padding is None or d.crop_padding >= 0, "data.crop_padding", d.crop_padding,
           "null or an integer >= 0")
    _check(len(d.synthetic_shape) == 3 and all(s > 0 for s in d.synthetic_shape),
           "data.synthetic_shape", d.synthetic_shape, "three positive integers (C, H, W)")
    _check(d.loader in LOADERS, "data.loader", d.loader, f"one of {LOADERS}")
    _check(d.num_workers >= 0, "data.num_workers", d.num_workers, "an integer >= 0")
    _check(m.arch in MODELS, "model.arch", m.arch, f"one of {MODELS.names()}")
    _check(0.0 <= m.dropout < 1.0, "model.dropout", m.dropout, "a rate in [0, 1)")
    _check(m.depth >= 10 and (m.depth - 4) % 6 == 0, "model.depth", m.depth,
           "6n + 4 with n >= 1 (e.g. 16, 28, 34)")
    _check(m.widen >= 1, "model.widen", m.widen, "an integer >= 1")
    _check(a.norm in NORMS, "attack.norm", a.norm, f"one of {NORMS}")
    _check(math.isfinite(a.eps) and a.eps >= 0, "attack.eps", a.eps, "a finite value >= 0")
    _check(math.isfinite(a.step) and a.step >= 0, "attack.step", a.step, "a finite value >= 0")
    _check(a.steps >= 0, "attack.steps", a.steps, "an integer >= 0")
    _check(me.name in method_names(), "method.name", me.name, f"one of {method_names()}")
    _check(me.trades_beta >= 0, "method.trades_beta", me.trades_beta, "a value >= 0")
    _check(math.isfinite(me.rst_beta) and me.rst_beta > 0, "method.rst_beta", me.rst_beta,
           "a finite value > 0 (0 would be natural training that pays for the attack)")
    _check(math.isfinite(me.mart.beta) and me.mart.beta >= 0, "method.mart.beta", me.mart.beta, "a finite value >= 0")
    _check(me.fat.tau >= 0, "method.fat.tau", me.fat.tau, "an integer >= 0")
    _check(me.iat.warmup_epochs >= 0, "method.iat.warmup_epochs", me.iat.warmup_epochs, "an integer >= 0")
    _check(math.isfinite(me.iat.gamma) and me.iat.gamma > 0, "method.iat.gamma", me.iat.gamma,
           "a finite value > 0 (pixel space)")
    _check(math.isfinite(me.iat.beta) and 0.0 < me.iat.beta <= 1.0, "method.iat.beta", me.iat.beta,
           "a weight in (0, 1]")
    _check(me.iat.max_eps is None or (math.isfinite(me.iat.max_eps) and me.iat.max_eps > 0), "method.iat.max_eps",
           me.iat.max_eps, "null or a finite value > 0 (pixel space)")
    g = me.generalist
    _check(g.robust_objective in OBJECTIVES, "method.generalist.robust_objective", g.robust_objective,
           f"one of {OBJECTIVES.names()}")
    _check_schedule(g.beta, "method.generalist.beta")
    _check(all(0.0 <= v <= 1.0 for v in g.beta.values), "method.generalist.beta.values", g.beta.values,
           "weights in [0, 1]")
    _check(0.0 <= g.decay_max < 1.0, "method.generalist.decay_max", g.decay_max, "a value in [0, 1)")
    _check(g.decay_warmup >= 1.0, "method.generalist.decay_warmup", g.decay_warmup, "a value >= 1")
    _check(0.0 <= g.sync_start <= 1.0, "method.generalist.sync_start", g.sync_start, "a fraction in [0, 1]")
    _check(g.sync_period > 0, "method.generalist.sync_period", g.sync_period, "a fraction > 0")
    _check(g.sync_mode in ("every_step", "epoch_end", "windows"), "method.generalist.sync_mode", g.sync_mode,
           "'every_step', 'epoch_end' or 'windows'")
    _check(0.0 < g.sync_length <= g.sync_period, "method.generalist.sync_length", g.sync_length,
           f"a fraction in (0, sync_period = {g.sync_period:.6g}]")
    _check_optim(cfg.optim, "optim")
    _check_optim(g.robust_optim, "method.generalist.robust_optim")
    _check_optim(g.natural_optim, "method.generalist.natural_optim")
    _check_ducat(me)
    _check(t.epochs >= 1, "train.epochs", t.epochs, "an integer >= 1")
    _check(t.max_steps is None or t.max_steps >= 1, "train.max_steps", t.max_steps, "null or an integer >= 1")
    _check(t.checkpoint_every_steps >= 0, "train.checkpoint_every_steps", t.checkpoint_every_steps,
           "an integer >= 0")
    _check(t.finite_check_every_steps >= 0, "train.finite_check_every_steps", t.finite_check_every_steps,
           "an integer >= 0")
    _check(t.val_points >= 0, "train.val_points", t.val_points, "an integer >= 0")
    _check(t.select_metric in ("pgd", "clean", "sum"), "train.select_metric", t.select_metric,
           "'pgd', 'clean' or 'sum'")
    _check(t.process_group in PROCESS_GROUPS, "train.process_group", t.process_group, f"one of {PROCESS_GROUPS}")
    _check(t.dist_check_every_steps >= 0, "train.dist_check_every_steps", t.dist_check_every_steps,
           "an integer >= 0")
    _check(re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", t.device) is not None, "train.device", t.device,
           "'auto', 'cpu', 'cuda' or 'cuda:N'")
    _check(0 <= t.threads <= MAX_THREADS, "train.threads", t.threads,
           f"an integer in [0, {MAX_THREADS}] (0: torch's default)")
    _check(t.out_dir.strip() != "", "train.out_dir", t.out_dir, "a folder path (an empty one would be the "
           "current folder)")
    _check(e.num_points > 0, "eval.num_points", e.num_points, "an integer > 0")
    _check(len(e.attacks) > 0 and all(x in EVAL_ATTACKS for x in e.attacks), "eval.attacks", e.attacks,
           f"a non-empty list drawn from {EVAL_ATTACKS} (an empty one would write results without results)")
    _check(e.eps is None or (math.isfinite(e.eps) and e.eps >= 0), "eval.eps", e.eps, "null or a value >= 0")
    _check(e.pgd_steps >= 1, "eval.pgd_steps", e.pgd_steps, "an integer >= 1")
    _check(e.cw_steps >= 1, "eval.cw_steps", e.cw_steps, "an integer >= 1")
    _check(e.autoattack_version in AUTOATTACK_VERSIONS, "eval.autoattack_version", e.autoattack_version,
           f"one of {AUTOATTACK_VERSIONS}")
    _check(e.autoattack_batch_size is None or e.autoattack_batch_size >= 1, "eval.autoattack_batch_size",
           e.autoattack_batch_size, "null or an integer >= 1")
    _check_engine(cfg)
    return cfg


def _check_engine(cfg: RunConfig) -> None:
    """What can be checked without the device; trainer/engine/settings.py checks the rest once it is known."""
    from .registry import method_flag, method_names

    en, me, t = cfg.engine, cfg.method, cfg.train
    _check(en.precision in PRECISIONS, "engine.precision", en.precision, f"one of {PRECISIONS}")
    _check(en.eval_precision in EVAL_PRECISIONS, "engine.eval_precision", en.eval_precision,
           f"one of {EVAL_PRECISIONS}")
    _check(en.optimizer_impl in OPTIMIZER_IMPLS, "engine.optimizer_impl", en.optimizer_impl,
           f"one of {OPTIMIZER_IMPLS}")
    _check(en.cuda_graph_warmup_steps >= 1, "engine.cuda_graph_warmup_steps", en.cuda_graph_warmup_steps,
           "an integer >= 1 (the optimisers' state must exist before the capture)")
    _check(not (en.cudnn_benchmark and t.deterministic), "engine.cudnn_benchmark", en.cudnn_benchmark,
           "false or null with train.deterministic = true (benchmark mode picks algorithms by timing)")
    _check(not (en.two_streams and me.name != "generalist"), "engine.two_streams", en.two_streams,
           f"false or null with method.name {me.name!r}: only Generalist has two independent updates")
    if en.cuda_graphs:
        _check(t.device != "cpu", "engine.cuda_graphs", en.cuda_graphs, "false with train.device = 'cpu'")
        graph_methods = tuple(n for n in method_names() if method_flag(n, "graph_capturable"))
        _check(me.name in graph_methods, "engine.cuda_graphs", en.cuda_graphs,
               f"false with method.name {me.name!r} (graphs capture {graph_methods} only)")
        _check(not (me.name == "generalist" and me.generalist.robust_objective not in graph_methods),
               "engine.cuda_graphs", en.cuda_graphs, f"false with method.generalist.robust_objective = "
               f"{me.generalist.robust_objective!r} (not captured)")
        _check(not me.ducat.enabled, "engine.cuda_graphs", en.cuda_graphs,
               "false with method.ducat.enabled (its loss switches on mid-run and is not captured)")
        _check(en.precision != "fp16", "engine.cuda_graphs", en.cuda_graphs,
               "false with engine.precision = 'fp16' (the loss scaler reads its overflow flag on the host)")
        _check(en.optimizer_impl == "torch", "engine.cuda_graphs", en.cuda_graphs,
               "false with engine.optimizer_impl = 'apex' (FusedSGD takes the learning rate as a host float)")
    if t.device == "cpu":
        _check(not en.two_streams, "engine.two_streams", en.two_streams, "false or null with train.device = 'cpu'")
        _check(en.optimizer_impl != "apex", "engine.optimizer_impl", en.optimizer_impl,
               "'torch' with train.device = 'cpu' (apex's FusedSGD runs on CUDA only)")


# ---------------------------------------------------------------------------------------------
# Conversion from and to plain dicts (YAML, JSON, checkpoints)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


_DECIMAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) or (
        isinstance(value, str) and _DECIMAL.fullmatch(value.strip()) is not None)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML/JSON value to the annotated type, raising ConfigError on a mismatch."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if tp is Schedule and _is_number(value):
        # A plain number is a constant schedule (optim.lr=0.1, method.generalist.beta=1.0).
        value = {"knots": [0.0], "values": [value]}
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            expected = ("a number (constant) or a mapping {knots: [...], values: [...]}" if tp is Schedule
                        else f"a mapping of {tp.__name__} fields")
            raise ConfigError(f"config field '{where}' = {value!r}: expected {expected}")
        return from_dict(tp, value, prefix=where + ".")
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"config field '{where}' = {value!r}: expected a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"config field '{where}' = {value!r}: expected a list of {len(args)} values")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config field '{where}' = {value!r}: expected true or false")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config field '{where}' = {value!r}: expected an integer")
        return value
    if tp is float:
        if isinstance(value, str) and _DECIMAL.fullmatch(value.strip()):
            # YAML 1.1 reads 5e-4 (no dot in the mantissa) as a string; it is the number the user wrote.
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config field '{where}' = {value!r}: expected a number")
        try:
            return float(value)
        except OverflowError:  # an integer beyond the float range
            raise ConfigError(f"config field '{where}' = {value!r}: expected a number within the float "
                              "range") from None
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config field '{where}' = {value!r}: expected a string")
        return value
    return value


_T = typing.TypeVar("_T")


def _renamed(old: str) -> str:
    return f"config field '{old}' was renamed to '{RENAMED_KEYS[old]}'; use the new name"


def _refuse_renamed_keys(data: Mapping[str, Any], where: str) -> None:
    """ConfigError naming `where` (a file, say) when a user's config still uses a key of RENAMED_KEYS."""
    for old in RENAMED_KEYS:
        section, key = old.split(".")
        node = data.get(section)
        if isinstance(node, Mapping) and key in node:
            raise ConfigError(f"{where}: {_renamed(old)}")


def refuse_renamed_override(item: str) -> None:
    """ConfigError when the dotted override `item` ("data.backend=cpu") sets a key of RENAMED_KEYS."""
    key = item.split("=", 1)[0].strip()
    if key in RENAMED_KEYS:
        raise ConfigError(f"override {item!r}: {_renamed(key)}")


def migrate_stored_config(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A config dict stored by an older version (checkpoint, config.yaml) with the keys of RENAMED_KEYS moved to
    their new names: (the migrated copy, the old keys found). `data` itself is left as it is."""
    migrated = copy.deepcopy(data)
    found = []
    for old, new in RENAMED_KEYS.items():
        (section, key), (new_section, new_key) = old.split("."), new.split(".")
        node = migrated.get(section)
        if isinstance(node, dict) and key in node:
            value = node.pop(key)
            target = migrated.setdefault(new_section, {})
            if isinstance(target, dict):
                target.setdefault(new_key, value)
            found.append(old)
    return migrated, found


def from_dict(cls: type[_T], data: dict[str, Any], prefix: str = "") -> _T:
    """Build a (nested) config dataclass from a dict; unknown keys are errors, missing keys default."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    # YAML keys need not be strings (`1: x`, `null: x`), and mixed types do not sort among themselves.
    unknown = sorted(set(data) - names, key=repr)
    if unknown and f"{prefix}{unknown[0]}" in RENAMED_KEYS:
        raise ConfigError(_renamed(f"{prefix}{unknown[0]}"))
    if unknown:
        raise ConfigError(f"unknown config field '{prefix}{unknown[0]}': {cls.__name__} has {sorted(names)}")
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict with lists for tuples (YAML/JSON friendly)."""
    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        return v
    return conv(cfg)


def _yaml_problem(exc: Exception) -> str:
    """One line saying what is wrong with a YAML text (PyYAML's messages span several lines)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return " ".join(f"{exc.context + ', ' if exc.context else ''}{exc.problem}{where}".split())
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return " ".join(str(exc).split())


# What yaml.safe_load raises on bad text besides YAMLError: ValueError for well-formed but impossible values
# (`2001-13-45`, an integer of more than 4300 digits, `!!int abc`), RecursionError for very deep nesting.
_YAML_FAILURES = (yaml.YAMLError, ValueError, RecursionError)


def _parse_value(item: str, text: str) -> Any:
    if text == "":
        return ""
    try:
        return yaml.safe_load(text)
    except _YAML_FAILURES as exc:
        # Tags such as !!python/object/apply are refused by safe_load, never executed.
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({_yaml_problem(exc)})") from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted `a.b.c=value` overrides (values parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected the form section.field=value")
        refuse_renamed_override(item)
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: '{p}' is not a section")
            node = child
        node[parts[-1]] = _parse_value(item, text)
    return data


def load_config(path: str | Path | Mapping[str, Any] | None = None,
                overrides: Sequence[str] | None = None) -> RunConfig:
    """Load a YAML preset, a dict shaped like one (`{"method": {"name": "trades"}}`) or the defaults; apply dotted
    overrides (`["train.epochs=3"]`); validate."""
    data: dict[str, Any] = {}
    if isinstance(path, Mapping):
        data = copy.deepcopy(dict(path))  # the overrides below edit it in place
        _refuse_renamed_keys(data, "config mapping")
    elif path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p}: not found")
        try:
            text = p.read_bytes().decode("utf-8")
        except OSError as exc:
            raise ConfigError(f"config file {p}: cannot be read ({exc.strerror or exc})") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {p}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                              f"{exc.start}); expected a YAML file") from None
        try:
            loaded = yaml.safe_load(text)
        except _YAML_FAILURES as exc:
            raise ConfigError(f"config file {p}: not valid YAML ({_yaml_problem(exc)})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {p}: expected a mapping at the top level")
        data = loaded or {}
        _refuse_renamed_keys(data, f"config file {p}")
    apply_overrides(data, [overrides] if isinstance(overrides, str) else list(overrides or []))
    return validate(from_dict(RunConfig, data))


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    return validate(from_dict(RunConfig, data))


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically (a killed run never leaves half a config.yaml)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    tmp.replace(path)
