"""Hostile inputs not covered elsewhere, each answered by the project's own error naming the problem.

Covered already, and not repeated here: the readers' truncated / corrupt / wrongly shaped files, labels
out of range and mismatched counts (tests/data/test_*_reader.py), unknown method / model and a
negative attack.eps (tests/core/test_config.py), an output folder below a file and changing the method
on a CLI resume (tests/core/test_checkpoint_resume.py, test_cli.py).
"""

import dataclasses

import numpy as np
import pytest

import generalist_trainer.trainer.training as training
from generalist_trainer.trainer.cli import main
from generalist_trainer.trainer.config import load_config
from generalist_trainer.trainer.errors import CheckpointError, ConfigError, DatasetError
from tests.data.file_formats import write_idx_dataset
from tests.reliability.runs import TINY, tiny_config

IN_PROCESS = ("train.deterministic=false", "train.threads=0")


@pytest.mark.parametrize("override, field", [
    ("eval.eps=-0.01", "eval.eps"),
    ("attack.eps=.nan", "attack.eps"),
    ("attack.step=-1", "attack.step"),
    ("attack.steps=-2", "attack.steps"),
    ("data.batch_size=-32", "data.batch_size"),
    ("data.eval_batch_size=0", "data.eval_batch_size"),
    ("train.epochs=0", "train.epochs"),
    ("train.checkpoint_every_steps=-1", "train.checkpoint_every_steps"),
    ("train.finite_check_every_steps=-5", "train.finite_check_every_steps"),
    ("train.finite_check_every_steps=1.5", "train.finite_check_every_steps"),
    ("model.dropout=1.0", "model.dropout"),
    ("model.depth=30", "model.depth"),
    ("method.trades_beta=-1", "method.trades_beta"),
    ("optim.lr.values=[0.1, -0.1, 0.0, 0.0]", "optim.lr.values"),
    ("attack.norm=l1", "attack.norm"),
    ("data.dataset=imagenet", "data.dataset"),
])
def test_invalid_config_values_name_the_field_and_value(override, field):
    with pytest.raises(ConfigError, match=rf"config field '{field}' = .*: expected"):
        load_config(None, [override])


def test_batch_larger_than_the_training_set_is_refused_before_any_step(tmp_path):
    with pytest.raises(ConfigError, match=r"'data.batch_size' = 512: larger than the 128 training images"):
        training.train(tiny_config(tmp_path, *IN_PROCESS, "data.batch_size=512"))
    assert not (tmp_path / "last.pt").exists() and not (tmp_path / "steps.jsonl").exists()


def test_output_folder_that_is_a_file_is_refused_before_data_or_models_are_built(tmp_path, monkeypatch):
    target = tmp_path / "taken"
    target.write_text("a file, not a folder")

    def never(cfg):
        raise AssertionError("the data and networks were built before the output folder was checked")

    monkeypatch.setattr(training, "open_session", never)
    with pytest.raises(ConfigError, match=rf"'train.out_dir' = '{target}': cannot write there"):
        training.train(tiny_config(target, *IN_PROCESS))


def test_cli_reports_an_unwritable_output_folder_with_exit_2(tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("x")
    assert main(["train", "--no-eval", *TINY, f"train.out_dir={target / 'run'}"]) == 2
    assert "train.out_dir" in capsys.readouterr().err


@pytest.fixture(scope="module")
def natural_run(tmp_path_factory):
    """A two-step natural run whose last.pt the resume tests try to load into other runs."""
    run = tmp_path_factory.mktemp("natural") / "run"
    training.train(tiny_config(run, *IN_PROCESS, "method.name=natural", "train.max_steps=2"))
    return run


@pytest.mark.parametrize("changes, expected", [
    (["method.name=pgd_at"], r"written by method 'natural', this run is 'pgd_at'"),
    (["model.arch=preact_resnet18"], r"network 'model' does not fit the configured model"),
    (["data.synthetic_shape=[3, 12, 12]"], r"network 'model' does not fit the configured model"),
    (["data.synthetic_classes=4"], r"network 'model' does not fit the configured model"),
])
def test_resuming_a_checkpoint_into_another_method_model_or_data_is_refused(natural_run, changes, expected):
    cfg = tiny_config(natural_run, *IN_PROCESS, "method.name=natural", *changes)
    with pytest.raises(CheckpointError, match=rf"checkpoint {natural_run / 'last.pt'}: {expected}"):
        training.train(cfg, resume=True)


@pytest.mark.parametrize("override", ["model.arch=wrn", "method.name=trades", "data.synthetic_classes=4",
                                      "train.seed=3"])
def test_cli_resume_refuses_to_change_what_the_checkpoint_was_trained_as(natural_run, override, capsys):
    assert main(["train", "--resume", str(natural_run), "--no-eval", override]) == 2
    assert f"override '{override}': a resumed run keeps its config" in capsys.readouterr().err


def test_resume_without_any_checkpoint_names_what_was_looked_for(tmp_path, capsys):
    with pytest.raises(CheckpointError, match=r"no usable checkpoint .*last.pt: not found.*last.prev.pt: not found"):
        training.train(tiny_config(tmp_path, *IN_PROCESS), resume=True)
    assert main(["train", "--resume", str(tmp_path / "nothing"), "--no-eval"]) == 2
    assert "last.pt: not found" in capsys.readouterr().err


def test_a_fresh_run_refuses_a_folder_that_holds_only_a_previous_checkpoint(natural_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.prev.pt").write_bytes((natural_run / "last.pt").read_bytes())
    with pytest.raises(ConfigError, match="already holds a run"):
        training.train(tiny_config(run, *IN_PROCESS))
    assert sorted(p.name for p in run.iterdir()) == ["last.prev.pt"]  # not even a config.yaml written


def test_a_fresh_run_into_an_existing_run_changes_nothing_there(natural_run, monkeypatch):
    before = {p.name: p.read_bytes() for p in natural_run.iterdir()}

    def never(cfg):
        raise AssertionError("the data and networks were built before the folder was found taken")

    monkeypatch.setattr(training, "open_session", never)
    with pytest.raises(ConfigError, match=rf"'train.out_dir' = '{natural_run}': already holds a run"):
        training.train(tiny_config(natural_run, *IN_PROCESS, "train.epochs=5"))
    assert {p.name: p.read_bytes() for p in natural_run.iterdir()} == before


def _idx_data(folder, train_side, test_side, width=None):
    rng = np.random.default_rng(0)
    train = (rng.integers(0, 256, (48, train_side, width or train_side), dtype=np.uint8),
             rng.integers(0, 10, 48, dtype=np.uint8))
    test = (rng.integers(0, 256, (8, test_side, width or test_side), dtype=np.uint8),
            rng.integers(0, 10, 8, dtype=np.uint8))
    write_idx_dataset(folder, train, test)
    return folder


def _idx_config(tmp_path, data_dir):
    return load_config(None, ["data.dataset=mnist", f"data.data_dir={data_dir}", "data.val_size=16",
                              "data.batch_size=16", "method.name=natural", "train.epochs=1", "train.progress=false",
                              "train.val_points=16", "train.val_pgd_steps=1", f"train.out_dir={tmp_path / 'run'}",
                              *IN_PROCESS])


def test_non_square_images_are_refused_naming_the_dataset(tmp_path):
    cfg = _idx_config(tmp_path, _idx_data(tmp_path / "data", 12, 12, width=10))
    with pytest.raises(DatasetError, match=r"dataset mnist: images are 12x10; expected square images"):
        training.train(cfg)


def test_train_and_test_images_of_different_shapes_are_refused(tmp_path):
    from generalist_trainer.trainer.eval.saved_models import evaluate_checkpoint

    cfg = _idx_config(tmp_path, _idx_data(tmp_path / "data", 12, 10))
    cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, attacks=("clean",), num_points=8))
    with pytest.raises(DatasetError, match="training images are .* test images .* expected the same shape"):
        result = training.train(cfg)
        evaluate_checkpoint(result.run_dir, which="best")
