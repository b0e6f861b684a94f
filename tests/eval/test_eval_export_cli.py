"""`python -m generalist_trainer eval --model-export DIR`: an exported model evaluated without its run folder or
training data
beyond the test set, the same JSON as a run's evaluation; a bad folder is one line and exit code 2."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from generalist_trainer.trainer.cli import main
from generalist_trainer.trainer.eval.saved_models import evaluate_checkpoint
from generalist_trainer.trainer.model_loading import export_checkpoint
from generalist_trainer.trainer.training import train
from tests.core.idx_runs import idx_run_config, write_small_fashion_mnist

REPO = Path(__file__).resolve().parents[2]
EVAL = ["eval.num_points=16", "eval.attacks=[clean, pgd]", "eval.pgd_steps=2", "eval.progress=false"]


def trainer_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "generalist_trainer", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(export folder, a copy of the test data, the run's own evaluation report); the run folder and the training
    data are deleted."""
    root = tmp_path_factory.mktemp("export_eval")
    data = write_small_fashion_mnist(root / "data")
    train(idx_run_config(data, root / "run", "method.name=natural"))
    report = evaluate_checkpoint(root / "run", out=root / "run_eval.json", progress=False,
                                 eval_cfg=idx_run_config(data, root / "unused", *EVAL).eval)
    export_checkpoint(root / "run", root / "export")
    shutil.rmtree(root / "run")
    return root / "export", data, report


def test_an_export_is_evaluated_from_the_command_line_like_a_run(exported):
    export, data, run_report = exported
    done = trainer_cli("eval", "--model-export", str(export), "--data-dir", str(data), *EVAL)
    assert done.returncode == 0, done.stderr
    assert "natural on fashion-mnist test, 16 points, linf eps 0.1" in done.stdout
    assert f"results: {export / 'eval_model.json'}" in done.stdout
    report = json.loads((export / "eval_model.json").read_text())
    assert set(report) == set(run_report) - {"written_to"} | {"export"}
    assert report["export"] == str(export) and report["models"].keys() == {"model"}
    assert report["eval_config"] == run_report["eval_config"] and report["trained_until"] == run_report["trained_until"]
    # The same model on the same points: the same clean accuracy as the run's own evaluation.
    assert report["models"]["model"]["clean"] == run_report["models"]["model"]["clean"]
    assert 0.0 <= report["models"]["model"]["pgd2"] <= report["models"]["model"]["clean"]


def test_a_bad_export_folder_is_one_line_and_exit_2(exported, tmp_path):
    done = trainer_cli("eval", "--model-export", str(tmp_path / "missing"))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [f"error: export folder {tmp_path / 'missing'}: not found (expected the folder "
                                        "`python -m generalist_trainer export` wrote: model.safetensors and "
                                        "config.json)"]


@pytest.mark.parametrize("argv, message", [
    (["eval", "--model-export", "{empty}"], "error: export {empty}: config.json not found"),
    (["eval", "--model-export", "{export}", "--data-dir", "{empty}"],
     "error: {empty}/t10k-images-idx3-ubyte.gz: not found"),  # only the test split is read
    (["eval", "--model-export", "{export}", "--dataset", "cifar10"], "error: cifar10 has no default folder"),
    (["eval", "--model-export", "{export}", "--split", "train"], "error: --split train with --model-export"),
    (["eval", "--model-export", "{export}", "data.batch_size=3"], "error: override 'data.batch_size=3'"),
    (["eval", "{export}", "--model-export", "{export}"], "error: eval: give a run folder or checkpoint file"),
    (["eval"], "error: eval: give a run folder or checkpoint file"),
    (["eval", "{export}", "--data-dir", "{empty}"], "error: eval: --dataset and --data-dir go with --model-export"),
])
def test_wrong_export_arguments_are_one_line_errors(exported, tmp_path, capsys, argv, message):
    export, _, _ = exported
    names = {"export": str(export), "empty": str(tmp_path)}
    assert main([a.format(**names) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message.format(**names)), err
