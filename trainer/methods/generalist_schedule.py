"""Generalist's schedules (spec/generalist.md): EMA decay per step, mixing weight per epoch, and when G is
redistributed into the experts.

The authors' run has E = 120 epochs with redistribution after every step of epochs 75, 80, ..., 120; here those
constants are fractions of E (75/120 and 5/120). In whole epochs (sync_mode every_step / epoch_end) the period
rounds to at least one epoch, so a run of fewer than ~24 epochs redistributes in every epoch from 5/8 on. In
windows (sync_mode windows) the sync periods are fractions of the run's steps, so any length keeps the authors'
shape: ten windows of 1/120 of the run, 5/120 apart, the last ending with the run.
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


# Positions are compared in floats (5/120 has no exact binary form); this absorbs their rounding at the edges.
_EDGE = 1e-9


def in_sync_window(position: float, cfg: GeneralistConfig) -> bool:
    """Whether a step that ends at `position` (a fraction of the run in (0, 1]) ends inside a sync window: windows
    (end - sync_length, end] for end = sync_start, sync_start + sync_period, ... up to 1."""
    k = max(0, math.ceil((position - cfg.sync_start) / cfg.sync_period - _EDGE))
    end = cfg.sync_start + k * cfg.sync_period
    return end <= 1.0 + _EDGE and end - cfg.sync_length + _EDGE < position <= end + _EDGE


def sync_steps_of_epoch(epoch: int, total_epochs: int, steps_per_epoch: int, cfg: GeneralistConfig) -> frozenset[int]:
    """The 0-based batch indices of the 1-based `epoch` after which G is redistributed at every step (sync_mode
    every_step or windows; epoch_end redistributes once, at the end of a sync epoch, and has none)."""
    if cfg.sync_mode == "every_step":
        return frozenset(range(steps_per_epoch)) if is_sync_epoch(epoch, total_epochs, cfg) else frozenset()
    if cfg.sync_mode != "windows":
        return frozenset()
    run_steps = total_epochs * steps_per_epoch
    first = (epoch - 1) * steps_per_epoch
    return frozenset(b for b in range(steps_per_epoch) if in_sync_window((first + b + 1) / run_steps, cfg))


def distorted_sync_warning(total_epochs: int, cfg: GeneralistConfig) -> str | None:
    """A warning when sync_mode every_step at this run length redistributes after every step of over 1.5 times the
    authors' share of the run (10 windows of sync_length: 10/120 with the defaults); None otherwise."""
    if cfg.sync_mode != "every_step":
        return None
    windows = math.floor((1.0 - cfg.sync_start) / cfg.sync_period + _EDGE) + 1
    intended = windows * cfg.sync_length
    epochs = [e for e in range(1, total_epochs + 1) if is_sync_epoch(e, total_epochs, cfg)]
    share = len(epochs) / total_epochs
    if share <= intended * 1.5:
        return None
    return (f"method.generalist.sync_mode every_step at {total_epochs} epochs: the sync period rounds to "
            f"{sync_period_epochs(total_epochs, cfg)} epoch(s), so G is copied into both experts after every step of "
            f"{len(epochs)} of the {total_epochs} epochs ({share:.0%} of the run; the authors' schedule: "
            f"{intended:.0%}), and the experts barely move then; sync_mode windows keeps the authors' shape at "
            "any length")
