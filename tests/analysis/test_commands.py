"""`python -m generalist_trainer sweep | lipschitz | separation | report` end to end on a tiny synthetic run."""

import json
import shutil
import sys

import numpy as np
import pytest
import yaml

from generalist_trainer.trainer.cli import main
from generalist_trainer.trainer.config import DataConfig
from generalist_trainer.trainer.data import load_dataset

TINY = [
    "data.dataset=synthetic", "data.synthetic_shape=[1, 12, 12]", "data.synthetic_train_size=224",
    "data.synthetic_test_size=64", "data.val_size=32", "data.batch_size=32", "data.eval_batch_size=64",
    "model.arch=small_cnn", "attack.eps=0.1", "attack.step=0.05", "attack.steps=2", "train.epochs=2",
    "train.val_points=32", "train.val_pgd_steps=2", "train.progress=false", "train.log_every_steps=1",
    "eval.num_points=32", "eval.attacks=[clean, pgd, cw]", "eval.pgd_steps=2", "eval.cw_steps=2",
]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny natural run, trained and evaluated (eval_best.json) by the CLI."""
    run_dir = tmp_path_factory.mktemp("runs") / "natural"
    assert main(["train", "method.name=natural", *TINY, f"train.out_dir={run_dir}"]) == 0
    return run_dir


def test_sweep_writes_the_curve_with_eps_zero_equal_to_clean(run, capsys):
    assert main(["sweep", str(run), "--num-points", "16", "--steps", "2", "--eps", "0.1", "0.05"]) == 0
    assert "sweep_best.json" in capsys.readouterr().out
    report = json.loads((run / "sweep_best.json").read_text())
    res = report["models"]["model"]
    assert report["num_points"] == 16 and report["norm"] == "linf"
    assert [p["eps"] for p in res["curve"]] == [0.0, 0.05, 0.1]
    assert res["curve"][0]["accuracy"] == res["clean"]
    assert all(0.0 <= p["accuracy"] <= 1.0 for p in res["curve"])
    assert "eps_zero_differs_from_clean" not in {f["check"] for f in res["sanity"]}


def test_lipschitz_writes_train_and_test(run, capsys):
    out = run / "lip.json"
    assert main(["lipschitz", str(run), "--num-points", "4", "--batch-size", "4", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["variant"] == "ascent" and report["eps"] == 0.1 and "attack.eps" in report["eps_source"]
    splits = report["models"]["model"]
    assert set(splits) == {"train", "test"}
    for summary in splits.values():
        assert summary["num_points"] == 4 and 0 < summary["mean"] <= summary["max"] < float("inf")
    assert main(["lipschitz", str(run), "--split", "test", "--num-points", "4", "--variant", "authors_descent",
                 "--eps", "0.05", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["variant"] == "authors_descent" and report["eps"] == 0.05
    assert set(report["models"]["model"]) == {"test"}
    assert main(["lipschitz", str(run), "--models", "global"]) == 2
    assert "has models ['model']" in capsys.readouterr().err


@pytest.fixture(scope="module")
def separation_json(tmp_path_factory):
    out = tmp_path_factory.mktemp("separation") / "sep.json"
    assert main(["separation", "--dataset", "synthetic", "--train-points", "60", "--test-points", "15", "--eps",
                 "0.05", "--device", "cpu", "--memory-mb", "0.5", "--out", str(out)]) == 0
    return out


def test_separation_matches_brute_force_on_a_prefix(separation_json):
    report = json.loads(separation_json.read_text())
    train, test = load_dataset(DataConfig(dataset="synthetic"), "train"), load_dataset(DataConfig(dataset="synthetic"),
                                                                                        "test")
    tx, ty = train.images[:60].reshape(60, -1).astype(int), train.labels[:60]
    for name, (qx, qy) in {"train_train": (tx, ty),
                           "test_train": (test.images[:15].reshape(15, -1).astype(int), test.labels[:15])}.items():
        dist = np.abs(qx[:, None] - tx[None]).max(-1).astype(float)
        dist[qy[:, None] == ty[None]] = np.inf
        nearest = dist.min(1) / 255
        kept = nearest[nearest > 0]
        assert report[name]["min_distance"] == kept.min()
        assert report[name]["mean_distance"] == pytest.approx(kept.mean(), rel=1e-12)
        assert report[name]["conflicting_duplicates"] == int((nearest == 0).sum())
        verdict = {"eps": 0.05, "two_eps": 0.1, "separated": bool(kept.min() >= 0.1)}
        assert report[name]["two_eps_separated"] == [verdict]


def fabricated_second_run(run, tmp_path):
    """A copy of `run` relabelled as PGD-AT, with an evaluation where AutoAttack beats PGD (a finding)."""
    other = tmp_path / "pgd_at"
    other.mkdir()
    for name in ("epochs.csv", "steps.jsonl"):
        shutil.copy(run / name, other / name)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["method"]["name"] = "pgd_at"
    (other / "config.yaml").write_text(yaml.safe_dump(config))
    evaluation = json.loads((run / "eval_best.json").read_text())
    evaluation["models"] = {"model": {"clean": 0.7, "pgd2": 0.4, "cw2": 0.41, "autoattack": 0.45}}
    (other / "eval_aa.json").write_text(json.dumps(evaluation))
    (other / "eval_aa.autoattack-model.json").write_text(json.dumps({"done": [0, 1], "robust": [True, False]}))
    return other


def test_report_writes_markdown_and_plots(run, separation_json, tmp_path, capsys):
    if not (run / "sweep_best.json").exists():
        assert main(["sweep", str(run), "--num-points", "8", "--steps", "2"]) == 0
    assert main(["lipschitz", str(run), "--split", "test", "--num-points", "4", "--batch-size", "4"]) == 0
    sep = separation_json
    other = fabricated_second_run(run, tmp_path)
    out = tmp_path / "reports" / "table.md"
    with pytest.warns(Warning) as record:
        assert main(["report", str(run), str(other), "--out", str(out), "--separation", str(sep)]) == 0
    assert any("autoattack_above_pgd" in str(w.message) for w in record)
    text = out.read_text()
    for heading in ("## Runs", "## Evaluations", "## Clean vs robust trade-off", "## Accuracy against eps",
                    "## Local Lipschitz", "## Dataset separation", "## Training curves", "## Sanity checks"):
        assert heading in text, heading
    figures = out.parent / "table_figures"
    for png in ("tradeoff.png", "accuracy_vs_eps.png", "training_natural.png", "training_pgd_at.png"):
        assert (figures / png).read_bytes()[:8] == PNG_MAGIC, png
        assert f"](table_figures/{png})" in text
    assert "| natural | eval_best.json | model |" in text  # the trade-off point of each run
    assert "| pgd_at | eval_aa.json | model | 32 | 70.0 | 40.0 | PGD-2 |" in text
    assert "autoattack-model" not in text  # AutoAttack's state file is not an evaluation
    assert "**autoattack_above_pgd** (pgd_at/eval_aa.json model model)" in text


def test_report_without_matplotlib_says_what_to_install(run, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["report", str(run), "--out", str(tmp_path / "r.md")]) == 2
    assert "pip install matplotlib" in capsys.readouterr().err


def test_bad_arguments(run, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["sweep", str(run), "eval.num_points=3"])  # dotted overrides are not silently dropped
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r.md")]) == 2
    assert "no config.yaml" in capsys.readouterr().err
    assert main(["separation", "--dataset", "imagenet"]) == 2
    assert "imagenet" in capsys.readouterr().err
