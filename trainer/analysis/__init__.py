"""Robustness analysis (spec/lipschitz.md): local Lipschitz constant, dataset separation, accuracy against
eps, sanity checks of an evaluation, and the markdown report over runs.

The report (matplotlib) is imported from `trainer.analysis.report` on demand, so this package needs no
optional dependency.
"""

from .eps_sweep import accuracy_vs_eps
from .lipschitz import LipschitzConfig, LipschitzEstimate, local_lipschitz
from .sanity import (
    RobustnessSanityWarning,
    SanityFinding,
    model_checks,
    result_checks,
    run_sanity_checks,
)
from .separation import nearest_other_label, separation

__all__ = [
    "LipschitzConfig",
    "LipschitzEstimate",
    "RobustnessSanityWarning",
    "SanityFinding",
    "accuracy_vs_eps",
    "local_lipschitz",
    "model_checks",
    "nearest_other_label",
    "result_checks",
    "run_sanity_checks",
    "separation",
]
