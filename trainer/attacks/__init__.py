"""Adversarial attacks on [0,1] inputs with eps in pixel space: PGD (Linf, L2), CW-inf, TRADES KL."""

from __future__ import annotations

from ..config import AttackConfig
from .base import Attack, eval_mode
from .cw import CWLinf, cw_margin
from .early_stop_pgd import EarlyStopPGD
from .per_sample_pgd import PerSamplePGD
from .pgd import PGD
from .trades_kl import TradesKL

__all__ = ["Attack", "CWLinf", "EarlyStopPGD", "PGD", "PerSamplePGD", "TradesKL", "build_train_attack", "cw_margin",
           "eval_mode"]


def build_train_attack(cfg: AttackConfig) -> PGD:
    """The training-time PGD; randomness from the global torch RNG, which checkpoints capture. No host-side
    input range check: the loaders produce [0, 1] by construction, and a read per call would stall every step."""
    attack = PGD(cfg.eps, cfg.step, cfg.steps, norm=cfg.norm, random_start=cfg.random_start)
    attack.check_input_range = False
    return attack
