"""AutoAttack (Croce & Hein, ICML 2020) through the official `pyautoattack` package, import-guarded."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import MissingDependencyError

# The attacks of eval.autoattack_version "apgd", in standard's order.
APGD_ATTACKS = ("apgd-ce", "apgd-t")


def autoattack_available() -> bool:
    try:
        import pyautoattack  # noqa: F401
    except ImportError:
        return False
    return True


def build_autoattack(model: nn.Module, *, eps: float, norm: str, seed: int, version: str, device: torch.device):
    """The official AutoAttack object with the version's attack list and settings, quiet."""
    try:
        from pyautoattack import AutoAttack
    except ImportError:
        raise MissingDependencyError(
            "AutoAttack was requested but the 'pyautoattack' package is not installed: "
            "pip install pyautoattack (or the project's 'eval' extra), or drop 'autoattack' from eval.attacks"
        ) from None
    aa_norm = {"linf": "Linf", "l2": "L2"}[norm]
    # "apgd" is not a pyautoattack version: standard's object, cut to its first two attacks (trainer/config.py).
    official = "standard" if version == "apgd" else version
    adversary = AutoAttack(model, norm=aa_norm, eps=eps, version=official, device=device, seed=seed)
    if version == "apgd":
        adversary.attacks_to_run = [a for a in adversary.attacks_to_run if a in APGD_ATTACKS]
    adversary.verbose = False
    return adversary


def run_autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str,
                   batch_size: int, seed: int, version: str = "standard") -> torch.Tensor:
    """Adversarial examples from one uninterrupted AutoAttack call; the caller's global RNG is left as it was.

    `trainer.eval.autoattack_resumable` is the resumable, sharded driver used by `trainer eval`; this
    one-shot form is the reference it is tested against.
    """
    devices = [x.device] if x.device.type == "cuda" else []
    # AutoAttack seeds the global generators itself; fork so the training / caller RNG stream is untouched.
    with torch.random.fork_rng(devices=devices):
        adversary = build_autoattack(model, eps=eps, norm=norm, seed=seed, version=version, device=x.device)
        # pyautoattack >= 0.2 returns (x_adv, predicted labels); the caller re-classifies x_adv itself.
        x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
    return x_adv
