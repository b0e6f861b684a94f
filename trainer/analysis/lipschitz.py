"""Empirical local Lipschitz constant of a classifier (Yang et al., "A Closer Look at Accuracy vs.
Robustness", NeurIPS 2020; spec/lipschitz.md section 2).

    L(f) = mean over points x of  max over x' in B_inf(x, eps) of  ||f(x) - f(x')||_1 / ||x - x'||_inf

with f the logits of the model in eval mode. The inner maximisation is the authors' procedure: start at
x + 0.001 N(0, I), take signed-gradient steps of 0.003, project onto the eps-ball and [0, 1] after each.

Two variants:
- "ascent" (the default, the definition): steps go UP the ratio and the best iterate is kept; the start
  is projected too, so every candidate x' is a point of B(x, eps) inside [0, 1]^d, and the estimate is a
  lower bound of the true local constant.
- "authors_descent": the released code (yangarbiter/robust-local-lipschitz, `estimate_local_lip_v2`)
  step for step. Its objective is the negative ratio and it adds +sign of that gradient, so it walks
  DOWN the ratio; it reports the ratio at the last iterate, with 1e-6 added to every coordinate of
  x - x' before the Linf norm. Use it to reproduce published numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..attacks import eval_mode
from ..errors import ConfigError

VARIANTS = ("ascent", "authors_descent")
# Radius of the ball per dataset (spec/lipschitz.md): 0.1 for MNIST-like data, 0.031 for 32x32 colour images.
# The released code adds this to x - x' before the Linf norm (so a zero step does not divide by zero).
AUTHORS_DENOMINATOR_SHIFT = 1e-6
# Smallest Linf step the ascent divides by: x' == x gives a zero numerator too, hence a ratio of 0.
_MIN_DENOMINATOR = 1e-12


@dataclass(frozen=True)
class LipschitzConfig:
    """The inner maximisation. Defaults are the authors' (spec/lipschitz.md) except eps, which is per dataset."""

    eps: float
    step: float = 0.003
    steps: int = 10
    # Standard deviation of the Gaussian start around x.
    init_std: float = 0.001
    # Points per batch; the authors use 16. Results do not depend on it except through the noise stream.
    batch_size: int = 16
    variant: str = "ascent"
    # Seed of the generator the start noise is drawn from (one torch.randn(batch.shape) per batch).
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("eps", "step", "init_std"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"local Lipschitz '{name}' = {value!r}: expected a finite value >= 0 (pixel space)")
        if self.eps == 0:
            raise ConfigError("local Lipschitz 'eps' = 0: expected a ball radius > 0 (the ratio needs x' != x)")
        for name in ("steps", "batch_size", "seed"):
            value = getattr(self, name)
            minimum = 1 if name == "batch_size" else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(f"local Lipschitz '{name}' = {value!r}: expected an integer >= {minimum}")
        if self.variant not in VARIANTS:
            raise ConfigError(f"local Lipschitz 'variant' = {self.variant!r}: expected one of {VARIANTS}")


@dataclass(frozen=True)
class LipschitzEstimate:
    """The mean ratio over the points and each point's ratio (float32, on the CPU)."""

    mean: float
    per_point: torch.Tensor  # (N,)
    config: LipschitzConfig

    def summary(self) -> dict:
        values = self.per_point.double()
        return {
            "mean": self.mean,
            "std": float(values.std()) if len(values) > 1 else 0.0,
            "max": float(values.max()) if len(values) else math.nan,
            "num_points": len(values),
            **asdict(self.config),
        }


def default_eps(dataset: str) -> float | None:
    """The spec's ball radius for a dataset (its registry entry's `lipschitz_eps`), or None when the spec names
    none (synthetic data) or the name is not registered."""
    from ..registry import DATASETS, load_registrations

    load_registrations()
    return DATASETS.get(dataset).lipschitz_eps if dataset in DATASETS else None


def lipschitz_ratio(logits_x: torch.Tensor, logits_xp: torch.Tensor, x: torch.Tensor, xp: torch.Tensor,
                    authors: bool = False) -> torch.Tensor:
    """||f(x) - f(x')||_1 / ||x - x'||_inf per point: logits (N, K), inputs (N, ...) -> (N,).

    `authors=True` takes the released code's denominator ||x - x' + 1e-6||_inf.
    """
    top = (logits_x - logits_xp).flatten(1).abs().sum(1)
    diff = (x - xp).flatten(1)
    if authors:
        return top / (diff + AUTHORS_DENOMINATOR_SHIFT).abs().amax(1)
    return top / diff.abs().amax(1).clamp_min(_MIN_DENOMINATOR)


def _project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Onto B_inf(x, eps), then onto [0, 1]: the authors' order."""
    return (x + (x_adv - x).clamp(-eps, eps)).clamp(0.0, 1.0)


def _batch_ratios(model: nn.Module, x: torch.Tensor, cfg: LipschitzConfig, generator: torch.Generator) -> torch.Tensor:
    """Each point's estimated local ratio for one batch x (B, C, H, W) -> (B,)."""
    authors = cfg.variant == "authors_descent"
    with torch.no_grad():
        logits_x = model(x).float()  # f(x) has no gradient: only x' moves
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    x_adv = x + cfg.init_std * noise
    if not authors:
        x_adv = _project(x_adv, x, cfg.eps)  # every candidate is a feasible x'

    def ratio(xp: torch.Tensor) -> torch.Tensor:
        return lipschitz_ratio(logits_x, model(xp).float(), x, xp, authors)

    best = torch.full((len(x),), -math.inf, device=x.device)
    for _ in range(cfg.steps):
        leaf = x_adv.detach().requires_grad_(True)
        r = ratio(leaf)  # (B,): the ratio of the current iterate, reused for the best-iterate bookkeeping
        # Points are independent in eval mode, so the gradient of the sum is each point's own gradient.
        (grad,) = torch.autograd.grad(r.sum(), leaf)
        best = torch.maximum(best, r.detach())
        # Released code: loss = -ratio, x' += step * sign(d loss / d x'), i.e. a step down the ratio.
        direction = -grad.sign() if authors else grad.sign()
        x_adv = _project(leaf.detach() + cfg.step * direction, x, cfg.eps)
    with torch.no_grad():
        last = ratio(x_adv)
    return last if authors else torch.maximum(best, last)


def local_lipschitz(model: nn.Module, x: torch.Tensor, cfg: LipschitzConfig) -> LipschitzEstimate:
    """Empirical local Lipschitz constant of `model` around each point of x (N, C, H, W) in [0, 1].

    Runs on x's device in batches of cfg.batch_size, in fp32 with autocast off. The model runs inside
    `eval_mode` (every submodule's flag restored, BatchNorm buffers untouched); gradients are taken with
    respect to the input only; the start noise comes from a generator seeded with cfg.seed, so the global
    RNG is left as it was.
    """
    if not x.is_floating_point() or x.dim() < 2:
        raise ValueError(f"local_lipschitz: expected float inputs (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
    x = x.detach().float()
    if x.numel() and bool((x.min() < 0) | (x.max() > 1)):
        raise ValueError(f"local_lipschitz: inputs must lie in [0, 1], got [{x.min().item():.4g}, "
                         f"{x.max().item():.4g}]")
    generator = torch.Generator(device=x.device).manual_seed(cfg.seed)
    ratios = []
    with eval_mode(model), torch.enable_grad(), torch.autocast(x.device.type, enabled=False):
        for start in range(0, len(x), cfg.batch_size):
            ratios.append(_batch_ratios(model, x[start:start + cfg.batch_size], cfg, generator).cpu())
    per_point = torch.cat(ratios) if ratios else torch.zeros(0)
    mean = float(per_point.double().mean()) if len(per_point) else math.nan
    return LipschitzEstimate(mean, per_point, cfg)


def estimate_models(models: dict[str, nn.Module], splits: dict[str, torch.Tensor], cfg: LipschitzConfig,
                    progress: Callable[[str], None] | None = None) -> dict[str, dict[str, dict]]:
    """{model: {split: summary}} for every model on every split (e.g. {"train": x_train, "test": x_test})."""
    results: dict[str, dict[str, dict]] = {}
    for name, model in models.items():
        results[name] = {}
        for split, x in splits.items():
            if progress is not None:
                progress(f"local Lipschitz of '{name}' on {len(x)} {split} points ({cfg.variant})")
            results[name][split] = local_lipschitz(model, x, cfg).summary()
    return results
