"""Tiny training runs on a dataset that lives in files (Fashion-MNIST's idx format, written by the test), so that a
test can delete the data and show what still works without it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from generalist_trainer.trainer.config import RunConfig, load_config
from tests.data.file_formats import write_idx_dataset

SIDE = 12


def write_small_fashion_mnist(folder: Path, train_points: int = 96, test_points: int = 32) -> Path:
    """An idx folder of random 12x12 images with labels 0..9; the same bytes every time."""
    rng = np.random.default_rng(14)
    train = (rng.integers(0, 256, (train_points, SIDE, SIDE), dtype=np.uint8),
             rng.integers(0, 10, train_points, dtype=np.uint8))
    test = (rng.integers(0, 256, (test_points, SIDE, SIDE), dtype=np.uint8),
            rng.integers(0, 10, test_points, dtype=np.uint8))
    return write_idx_dataset(folder, train, test)


def idx_run_config(data_dir: Path, run_dir: Path, *extra: str) -> RunConfig:
    """One epoch of 2 steps on `data_dir` (64 training images after the 32 held out for validation)."""
    return load_config(None, [
        "data.dataset=fashion-mnist", f"data.data_dir={data_dir}", "data.val_size=32", "data.batch_size=32",
        "data.eval_batch_size=32", "model.arch=small_cnn", "attack.eps=0.1", "attack.step=0.05", "attack.steps=1",
        "train.epochs=1", "train.val_points=16", "train.val_pgd_steps=1", "train.progress=false",
        "eval.num_points=16", f"train.out_dir={run_dir}", *extra])
