"""Robustness evaluation: clean, PGD-k, CW-k, AutoAttack and (DUCAT) logsumexp-fold PGD accuracy of models in memory
(ours or any `nn.Module`: any_model.py). `saved_models.py` is the `eval` command on a run's checkpoint or an export
folder; it is not imported here, since it reads runs through trainer.session, which imports this package."""

from .autoattack_adapter import autoattack_available, run_autoattack
from .class_fold import FoldedLogits, argmax_mod_classes, fold_logsumexp, fold_max, logsumexp_view
from .robustness import correct_mask, evaluate_model, evaluate_models

__all__ = ["FoldedLogits", "argmax_mod_classes", "autoattack_available", "correct_mask", "evaluate_model",
           "evaluate_models", "fold_logsumexp", "fold_max", "logsumexp_view", "run_autoattack"]
