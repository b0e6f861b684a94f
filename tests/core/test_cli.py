"""The command line end to end on a tiny synthetic run: train, eval, export, resume rules, errors."""

import json
import sys

import pytest
import torch
from safetensors.torch import load_file

from generalist_trainer.trainer.cli import main
from generalist_trainer.trainer.config import ModelConfig
from generalist_trainer.trainer.models import build_model

from .test_checkpoint_resume import TINY


def test_train_eval_export_round_trip(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "method.name=generalist", *TINY, f"train.out_dir={run}",
                 "eval.attacks=[clean, pgd, cw]"]) == 0
    out = capsys.readouterr().out
    assert "global" in out and "robust" in out and "natural" in out and "pgd20" in out
    for name in ("config.yaml", "epochs.csv", "steps.jsonl", "last.pt", "best.pt", "eval_best.json", "DONE"):
        assert (run / name).exists(), name
    report = json.loads((run / "eval_best.json").read_text())
    assert set(report["models"]) == {"global", "robust", "natural"}
    assert report["num_points"] == 32 and report["split"] == "test"
    for res in report["models"].values():
        assert 0.0 <= res["pgd20"] <= res["clean"] <= 1.0

    assert main(["eval", str(run), "--which", "last", "eval.attacks=[clean]", "eval.num_points=16"]) == 0
    assert json.loads((run / "eval_last.json").read_text())["num_points"] == 16

    out_dir = tmp_path / "export"
    assert main(["export", str(run), "--out", str(out_dir)]) == 0
    meta = json.loads((out_dir / "config.json").read_text())
    assert meta["exported_network"] == "global" and meta["num_classes"] == 10
    model = build_model(ModelConfig(**meta["model"]), num_classes=meta["num_classes"],
                        in_channels=meta["in_channels"], image_size=meta["image_size"],
                        mean=tuple(meta["mean"]), std=tuple(meta["std"]))
    model.load_state_dict(load_file(out_dir / "model.safetensors"))
    ckpt = torch.load(run / "best.pt", weights_only=True)
    reference = build_model(ModelConfig(**meta["model"]), num_classes=10, in_channels=1, image_size=12,
                            mean=tuple(meta["mean"]), std=tuple(meta["std"]))
    reference.load_state_dict(ckpt["networks"]["global"])
    x = torch.rand(4, 1, 12, 12)
    torch.testing.assert_close(model.eval()(x), reference.eval()(x))


def test_resume_rejects_changing_the_method(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "method.name=natural", *TINY, f"train.out_dir={run}", "train.max_steps=2"]) == 0
    assert main(["train", "--resume", str(run), "method.name=trades"]) == 2
    assert "only train.*" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--no-eval"]) == 0  # max_steps still 2: nothing to do
    assert not (run / "DONE").exists()
    assert main(["train", "--resume", str(run), "--no-eval", "train.max_steps=null"]) == 0
    assert (run / "DONE").exists()


def test_bad_config_value_exits_2_with_the_field_named(tmp_path, capsys):
    assert main(["train", *TINY, f"train.out_dir={tmp_path}", "attack.eps=-1"]) == 2
    assert "attack.eps" in capsys.readouterr().err


def test_autoattack_without_package_says_what_to_install(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    assert main(["train", "method.name=natural", *TINY, f"train.out_dir={run}", "--no-eval"]) == 0
    monkeypatch.setitem(sys.modules, "pyautoattack", None)  # import now fails as if not installed
    assert main(["eval", str(run), "eval.attacks=[autoattack]"]) == 2
    assert "pip install pyautoattack" in capsys.readouterr().err


def test_autoattack_runs_through_the_official_package(tmp_path):
    pytest.importorskip("pyautoattack")
    run = tmp_path / "run"
    assert main(["train", "method.name=natural", *TINY, f"train.out_dir={run}", "--no-eval"]) == 0
    rng_before = torch.get_rng_state()
    assert main(["eval", str(run), "eval.attacks=[clean, autoattack]", "eval.num_points=8"]) == 0
    assert torch.equal(torch.get_rng_state(), rng_before)
    res = json.loads((run / "eval_best.json").read_text())["models"]["model"]
    assert 0.0 <= res["autoattack"] <= res["clean"]
