"""Real data: on a Fashion-MNIST subset, PGD-AT's PGD accuracy beats natural training's."""

from pathlib import Path

import pytest

from generalist_trainer.trainer.config import load_config
from generalist_trainer.trainer.eval.saved_models import evaluate_checkpoint
from generalist_trainer.trainer.training import train

FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not FMNIST.exists(), reason="apt-get install dataset-fashion-mnist")
def test_pgd_at_is_more_robust_than_natural_training(tmp_path):
    common = ["data.dataset=fashion-mnist", "data.train_subset=4000", "data.val_size=1000", "data.batch_size=64",
              "model.arch=small_cnn", "attack.eps=0.1", "attack.step=0.04", "attack.steps=3",
              "optim.lr.values=[0.05, 0.05, 0.05, 0.05]", "train.epochs=2", "train.val_points=200",
              "train.val_pgd_steps=3", "train.progress=false", "eval.num_points=300",
              "eval.attacks=[clean, pgd]", "eval.pgd_steps=10"]
    acc = {}
    for method in ("natural", "pgd_at"):
        cfg = load_config(None, [*common, f"method.name={method}", f"train.out_dir={tmp_path / method}"])
        train(cfg)
        acc[method] = evaluate_checkpoint(tmp_path / method, which="last")["models"]["model"]
    assert acc["natural"]["clean"] > 0.6, acc  # both actually learned
    assert acc["pgd_at"]["clean"] > 0.5, acc
    assert acc["pgd_at"]["pgd10"] > acc["natural"]["pgd10"] + 0.15, acc
