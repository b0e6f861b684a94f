"""Validation after each epoch: clean and PGD-k accuracy of the shipped model on the validation split (never
the test set), through the evaluation code of `python -m generalist_trainer eval` (trainer/eval/robustness.py), with
the run's attack eps and eval.step_ratio, its own step count (train.val_pgd_steps) and a generator of its own."""

from __future__ import annotations

import dataclasses
import time

from .config import EvalConfig
from .distributed import is_distributed, world_size
from .errors import ConfigError
from .eval.robustness import evaluate_model
from .eval.sharded import evaluate_across_ranks
from .session import Session, dataset_tensors


def selection_score(clean: float, pgd: float, metric: str) -> float:
    return {"clean": clean, "pgd": pgd, "sum": clean + pgd}[metric]


def validation_eval_config(session: Session, epoch: int) -> EvalConfig:
    """Clean then PGD-`train.val_pgd_steps`; the seed depends on the epoch only, so validation never shifts
    the training RNG stream (exact resume) and every epoch is attacked with fresh noise."""
    cfg = session.cfg
    return dataclasses.replace(cfg.eval, eps=None, attacks=("clean", "pgd"), pgd_steps=cfg.train.val_pgd_steps,
                               seed=cfg.train.seed * 1000 + epoch, progress=False)


def validate(session: Session, epoch: int) -> dict[str, float]:
    """{"val_clean", "val_pgd<k>", "val_score", "validation_seconds"}; {} without a validation split.

    Under torchrun each rank attacks its contiguous share of the points and the correct counts are summed
    (trainer/eval/sharded.py), so every rank gets the same accuracies and makes the same best-checkpoint
    decision.
    """
    cfg = session.cfg
    if len(session.splits.val) == 0 or cfg.train.val_points == 0:
        return {}
    model = next(iter(session.method.eval_models().values()))
    x, y = dataset_tensors(session.splits.val, cfg.train.val_points, session.device)
    total = len(x)
    if is_distributed() and total < world_size():
        raise ConfigError(f"config field 'train.val_points' = {cfg.train.val_points}: {total} validation point(s) "
                          f"cannot be shared by the {world_size()} processes of this torchrun launch")
    eval_cfg = validation_eval_config(session, epoch)
    steps = eval_cfg.pgd_steps
    start = time.perf_counter()
    with session.method.engine.eval_autocast():  # engine.eval_precision: fp32 unless asked otherwise
        if is_distributed():
            result = evaluate_across_ranks({"model": model}, x, y, eval_cfg, cfg.attack, cfg.data.eval_batch_size,
                                           progress=None)["model"]
        else:
            result = evaluate_model(model, x, y, eval_cfg, cfg.attack, cfg.data.eval_batch_size)
    # Taken after the ranks' sums, which wait for the slowest rank: the wall time validation adds to an epoch
    # (epoch_seconds excludes it). Not "val_*": those keys are accuracies (the report plots them as such).
    seconds = time.perf_counter() - start
    # Correct counts over `total` points (a fraction of fewer than 2^24 points times their number rounds back to
    # the count exactly), so that the logged accuracies are exact fractions, as the selection compares them.
    clean = round(result["clean"] * total) / total
    pgd = round(result[f"pgd{steps}"] * total) / total
    return {"val_clean": clean, f"val_pgd{steps}": pgd,
            "val_score": selection_score(clean, pgd, cfg.train.select_metric), "validation_seconds": round(seconds, 2)}
