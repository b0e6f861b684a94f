"""PGD accuracy against the attack radius eps, always including eps = 0 (which must equal clean accuracy)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import torch
from torch import nn

from ..attacks import PGD
from ..errors import ConfigError
from ..eval.robustness import attacked_mask, correct_mask

# Radii of the default sweep, as multiples of the run's training eps.
DEFAULT_EPS_MULTIPLES = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0)


def sweep_radii(eps_values: Sequence[float]) -> list[float]:
    """Sorted distinct radii with 0 added; each must be finite and >= 0."""
    for e in eps_values:
        if not (math.isfinite(e) and e >= 0):
            raise ConfigError(f"sweep eps {e!r}: expected finite values >= 0 (pixel space)")
    return sorted({0.0, *(float(e) for e in eps_values)})


def largest_class_share(y: torch.Tensor) -> float:
    """The accuracy of always answering the most frequent label of y (N,)."""
    if len(y) == 0:
        return math.nan
    return float(torch.bincount(y.cpu()).max()) / len(y)


def accuracy_vs_eps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_values: Sequence[float], *,
                    norm: str = "linf", steps: int = 20, step_ratio: float = 2.5, batch_size: int = 500,
                    seed: int = 0) -> dict:
    """Clean accuracy and PGD-`steps` accuracy at each radius (random start; step = step_ratio * eps / steps).

    Every radius uses its own generator seeded with `seed`, so a radius gives the same number whatever
    else is in the list. Returns {"clean", "curve": [{"eps", "accuracy", "seconds"}], ...} with accuracies
    in [0, 1].
    """
    if steps < 1:
        raise ConfigError(f"sweep steps = {steps!r}: expected an integer >= 1")
    clean = float(correct_mask(model, x, y, batch_size).float().mean())
    curve = []
    for eps in sweep_radii(eps_values):
        start = time.perf_counter()
        generator = torch.Generator(device=x.device).manual_seed(seed)
        attack = PGD(eps, step_ratio * eps / steps, steps, norm=norm, random_start=True, generator=generator)
        accuracy = float(attacked_mask(model, attack, x, y, batch_size).float().mean())
        curve.append({"eps": eps, "accuracy": accuracy, "seconds": round(time.perf_counter() - start, 2)})
    return {"clean": clean, "curve": curve, "attack": f"pgd{steps}", "norm": norm, "step_ratio": step_ratio,
            "num_points": len(x), "largest_class_share": largest_class_share(y)}
