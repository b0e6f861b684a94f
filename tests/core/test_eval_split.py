"""`trainer eval --split train`: the same evaluation on the run's own training images (test stays the default)."""

import json

import pytest
import torch

from generalist_trainer.trainer.cli import main
from generalist_trainer.trainer.config import load_config
from generalist_trainer.trainer.errors import ConfigError
from generalist_trainer.trainer.eval.saved_models import evaluate_checkpoint
from generalist_trainer.trainer.session import dataset_tensors, session_from_checkpoint
from generalist_trainer.trainer.training import train

TINY = [
    "data.dataset=synthetic", "data.synthetic_shape=[1, 12, 12]", "data.synthetic_train_size=224",
    "data.synthetic_test_size=64", "data.val_size=32", "data.batch_size=32", "data.eval_batch_size=64",
    "model.arch=small_cnn", "attack.eps=0.1", "attack.step=0.05", "attack.steps=2", "train.epochs=1",
    "train.val_points=32", "train.val_pgd_steps=2", "train.progress=false", "method.name=natural",
    "eval.num_points=40", "eval.attacks=[clean, pgd]", "eval.pgd_steps=2",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "natural"
    assert train(load_config(None, [*TINY, f"train.out_dir={run_dir}"])).finished
    return run_dir


def test_split_train_attacks_the_training_images_and_test_stays_the_default(run, capsys, monkeypatch):
    import generalist_trainer.trainer.eval.saved_models as saved_models

    attacked = []
    real = saved_models.evaluate_models

    def spy(models, x, y, *args, **kwargs):
        attacked.append((x.clone(), y.clone()))
        return real(models, x, y, *args, **kwargs)

    monkeypatch.setattr(saved_models, "evaluate_models", spy)
    assert main(["eval", str(run), "--split", "train"]) == 0
    assert "natural on synthetic train, 40 points" in capsys.readouterr().out
    report = json.loads((run / "train_eval_best.json").read_text())
    assert report["split"] == "train" and report["num_points"] == 40
    assert 0.0 <= report["models"]["model"]["pgd2"] <= report["models"]["model"]["clean"] <= 1.0
    assert not (run / "eval_best.json").exists()  # the test-set results keep their own file

    assert main(["eval", str(run)]) == 0
    assert json.loads((run / "eval_best.json").read_text())["split"] == "test"

    session, _ = session_from_checkpoint(str(run / "best.pt"))
    for (x, y), split in zip(attacked, (session.splits.train, session.splits.test)):
        want_x, want_y = dataset_tensors(split, 40, torch.device("cpu"))
        assert torch.equal(x, want_x) and torch.equal(y, want_y)
    assert not torch.equal(attacked[0][0], attacked[1][0])


def test_unknown_split_is_refused(run, capsys):
    with pytest.raises(ConfigError, match="eval split 'val'"):
        evaluate_checkpoint(run, split="val")
    with pytest.raises(SystemExit):
        main(["eval", str(run), "--split", "val"])
    assert "invalid choice" in capsys.readouterr().err
