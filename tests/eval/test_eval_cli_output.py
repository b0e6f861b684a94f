"""`trainer train` / `trainer eval` as a user sees them: progress on stderr (and nothing of it in the results
table on stdout), eval.progress=false silences it, one decimal in the table, and a Generalist checkpoint
whose three models hold the same weights evaluated once."""

from __future__ import annotations

import contextlib
import io
import json
import re

import pytest
import torch

from generalist_trainer.trainer.cli import main
from generalist_trainer.trainer.config import EvalConfig
from generalist_trainer.trainer.eval.saved_models import evaluate_checkpoint
from tests.core.test_checkpoint_resume import TINY

EVAL = ["eval.attacks=[clean, pgd]", "eval.pgd_steps=2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two epochs of Generalist, then the evaluation of best.pt; the second epoch is a redistribution epoch
    (sync after every step), so last.pt's global model and experts are bit-identical. -> (run, its stderr)."""
    run = tmp_path_factory.mktemp("runs") / "generalist"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["train", "method.name=generalist", *TINY, *EVAL, f"train.out_dir={run}"]) == 0
    return run, err.getvalue()


@pytest.fixture
def generalist_run(trained):
    return trained[0]


def test_the_evaluation_after_train_shows_its_progress(trained):
    _, err = trained
    assert "global clean: started on 32 points" in err and re.search(r"^global pgd2: done, robust ", err, re.M)


def test_eval_shows_progress_on_stderr_only(generalist_run, capsys):
    assert main(["eval", str(generalist_run), "--which", "last", *EVAL]) == 0
    out, err = capsys.readouterr()
    # Progress: each evaluated stage starts and ends on stderr (not a terminal here: whole lines).
    for stage in ("global clean", "global pgd2"):
        assert f"{stage}: started on 32 points" in err and re.search(rf"^{stage}: done, ", err, re.M), err
    assert "robust: same weights as global, evaluated once" in err
    assert "natural: same weights as global, evaluated once" in err
    assert "robust clean: started" not in err  # the duplicates were not attacked
    # The table on stdout is clean: no progress, no carriage returns, accuracies with one decimal.
    assert "started on" not in out and "\r" not in out
    table = out.split("(accuracy %)\n", 1)[1].split("\nsanity checks")[0].splitlines()
    assert table[0].split() == ["model", "clean", "pgd2", "note"]
    rows = {line.split()[0]: line.split()[1:] for line in table[2:]}
    assert rows["robust"][2:] == rows["natural"][2:] == ["same", "weights", "as", "global"]
    report = json.loads((generalist_run / "eval_last.json").read_text())
    models = report["models"]
    for value, key in zip(rows["global"], ("clean", "pgd2")):
        assert re.fullmatch(r"\d+\.\d", value) and value == f"{100 * models['global'][key]:.1f}"
    assert models["robust"]["same_weights_as"] == models["natural"]["same_weights_as"] == "global"
    assert models["robust"]["pgd2"] == models["global"]["pgd2"] and "seconds_pgd2" not in models["robust"]
    # The weights really are the same in the checkpoint (the dedupe is not a guess).
    networks = torch.load(generalist_run / "last.pt", weights_only=True)["networks"]
    for name in ("robust", "natural"):
        assert all(torch.equal(networks[name][k], v) for k, v in networks["global"].items())


def test_progress_can_be_switched_off(generalist_run, capsys):
    assert main(["eval", str(generalist_run), "--which", "last", *EVAL, "eval.progress=false"]) == 0
    out, err = capsys.readouterr()
    assert "started on" not in err and "evaluated once" not in err
    assert "same weights as global" in out  # the table still says so
    # The Python API: progress=False whatever eval.progress says.
    report = evaluate_checkpoint(generalist_run, which="last", eval_cfg=EvalConfig(attacks=("clean",)),
                                 progress=False)
    assert capsys.readouterr().err == "" and report["models"]["natural"]["same_weights_as"] == "global"
