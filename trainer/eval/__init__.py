"""Robustness evaluation: clean, PGD-k, CW-k and AutoAttack accuracy."""

from trainer.eval.autoattack_adapter import autoattack_available, run_autoattack
from trainer.eval.robustness import correct_mask, evaluate_model, evaluate_models

__all__ = ["autoattack_available", "correct_mask", "evaluate_model", "evaluate_models", "run_autoattack"]
