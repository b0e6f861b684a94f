"""Generalist's schedules (spec/generalist.md): EMA decay per step, mixing weight and sync epochs per epoch.

The authors' run has E = 120 epochs with redistribution in epochs 75, 80, ..., 120; here those
constants are fractions of E (75/120 and 5/120), so a 6-epoch run keeps the same shape.
"""

from __future__ import annotations

import math

from ..config import GeneralistConfig


def ema_decay(step: int, cfg: GeneralistConfig) -> float:
    """d_k = min(decay_max, (k + 1) / (k + warmup)) for the 0-based global step k (warmup 10 in the paper)."""
    return min(cfg.decay_max, (step + 1) / (step + cfg.decay_warmup))


def mix_beta(epoch: int, total_epochs: int, cfg: GeneralistConfig) -> float:
    """Weight of the robust side in G at the 1-based epoch."""
    return cfg.beta.at(epoch, total_epochs)


def first_sync_epoch(total_epochs: int, cfg: GeneralistConfig) -> int:
    # The tiny offset absorbs float error: 0.625 * 120 must give 75, not 76.
    return max(1, math.ceil(cfg.sync_start * total_epochs - 1e-9))


def sync_period_epochs(total_epochs: int, cfg: GeneralistConfig) -> int:
    return max(1, round(cfg.sync_period * total_epochs))


def is_sync_epoch(epoch: int, total_epochs: int, cfg: GeneralistConfig) -> bool:
    """Redistribution epoch: e >= first sync epoch and e % period == 0 (75, 80, ..., 120 of 120)."""
    return epoch >= first_sync_epoch(total_epochs, cfg) and epoch % sync_period_epochs(total_epochs, cfg) == 0
