"""The config a stopped run continues with: the one its checkpoint was trained with, plus the few overrides a
resume may take (how long, how often to log or checkpoint, how to evaluate, where the data is read from).

    cfg = resumed_config("runs/fmnist_generalist", ["train.epochs=150"], change_length=True)
    train(cfg, resume=True)           # what `python -m generalist_trainer train --resume RUN --change-length ...` does
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path

from .checkpoint import load_resume_state
from .config import RunConfig, apply_overrides, config_from_dict, refuse_renamed_override
from .errors import ConfigError

log = logging.getLogger(__name__)

# Besides train.* (but train.seed and train.out_dir) and eval.*: the training loaders yield the same batches for a
# seed, so where and how the data is read may change.
_DATA_KEYS = ("data.data_dir", "data.loader", "data.num_workers")


def resumed_config(run_dir: str | Path, overrides: Sequence[str] = (), *, change_length: bool = False) -> RunConfig:
    """The checkpoint's own config with `overrides`; only train.* (not seed or out_dir), eval.* and the data
    reading keys may change, and train.epochs only with change_length (every schedule is a fraction of the run)."""
    run_dir = Path(run_dir)
    # Read-only: the newest checkpoint that verifies (train() itself sets a damaged one aside).
    state, _ = load_resume_state(run_dir)
    saved = copy.deepcopy(state["config"])
    for item in overrides:
        refuse_renamed_override(item)
        key = item.split("=", 1)[0].strip()
        allowed = key.startswith(("train.", "eval.")) or key in _DATA_KEYS
        if not allowed or key in ("train.seed", "train.out_dir"):
            raise ConfigError(f"override {item!r}: a resumed run keeps its config; only train.* "
                              "(except seed and out_dir), eval.*, data.data_dir, data.loader and "
                              "data.num_workers may change")
    data = apply_overrides(state["config"], list(overrides))
    data["train"]["out_dir"] = str(run_dir)
    cfg = config_from_dict(data)
    _check_length(saved, state["position"], cfg, change_length)
    return cfg


def _check_length(saved: dict, position: dict, cfg: RunConfig, change_length: bool) -> None:
    """A resumed run keeps its length unless change_length says otherwise: every schedule knot is a fraction of
    train.epochs, so a new length moves them all, those already passed included."""
    trained_for = saved["train"]["epochs"]
    if cfg.train.epochs == trained_for:
        return
    if not change_length:
        raise ConfigError(f"override 'train.epochs={cfg.train.epochs}': this run was started for {trained_for} "
                          "epochs, and its schedules (learning rate, Generalist's beta and redistribution epochs, "
                          "DUCAT's start) are fractions of the run, so a new length moves every knot, those already "
                          "passed included; pass --change-length (change_length=True) to do that anyway, or use "
                          "train.max_steps to stop early")
    epoch, batch = position["epoch"], position["batch"]
    trained = epoch if batch else epoch - 1  # epochs begun
    if cfg.train.epochs < trained:
        raise ConfigError(f"override 'train.epochs={cfg.train.epochs}': {trained} epoch(s) of this run are already "
                          f"trained (or begun); expected at least {trained}")
    log.info("run length changed from %d to %d epochs (--change-length): the schedules' knots move with it",
             trained_for, cfg.train.epochs)
