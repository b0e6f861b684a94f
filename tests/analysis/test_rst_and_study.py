"""RST(beta), the per-epoch monitoring attack, and the dropout study's table (scripts/dropout_table.py)."""

import csv
import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from generalist_trainer.trainer.checkpoint import LAST, load_checkpoint
from generalist_trainer.trainer.config import ModelConfig, load_config
from generalist_trainer.trainer.errors import ConfigError
from generalist_trainer.trainer.methods import AdversarialTraining, build_method, method_class
from generalist_trainer.trainer.models import build_model
from generalist_trainer.trainer.objectives.rst import RST
from generalist_trainer.trainer.registry import OBJECTIVES, method_names
from generalist_trainer.trainer.session import open_session
from generalist_trainer.trainer.training import train, validate

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "data.dataset=synthetic", "data.synthetic_shape=[1, 12, 12]", "data.synthetic_train_size=224",
    "data.synthetic_test_size=64", "data.val_size=32", "data.batch_size=32", "data.eval_batch_size=64",
    "model.arch=small_cnn", "attack.eps=0.1", "attack.step=0.05", "attack.steps=2",
    "train.epochs=2", "train.val_points=32", "train.val_pgd_steps=2", "train.progress=false",
    "train.log_every_steps=1", "eval.num_points=32",
]


def tiny_config(out_dir, *extra):
    return load_config(None, [*TINY, f"train.out_dir={out_dir}", *extra])


def small_cnn_factory(dropout: float):
    def factory():
        return build_model(ModelConfig(arch="small_cnn", dropout=dropout), num_classes=10, in_channels=1,
                           image_size=12, mean=(0.5,), std=(0.25,))
    return factory


# ---------------------------------------------------------------------------------------------
# RST


def test_rst_is_registered_and_its_preset_loads():
    assert "rst" in method_names() and method_class("rst") is AdversarialTraining and OBJECTIVES.get("rst") is RST
    cfg = load_config(REPO / "configs" / "fashion_mnist_rst.yaml")
    assert cfg.method.name == "rst" and cfg.method.rst_beta > 0 and cfg.attack.eps == 0.1


def test_rst_loss_equals_the_direct_formula(tmp_path):
    """CE(f(x), y) + beta CE(f(x_adv), y), x_adv from the PGD training attack, the model in train mode."""
    beta = 2.5
    cfg = tiny_config(tmp_path, "method.name=rst", f"method.rst_beta={beta}")
    torch.manual_seed(0)
    method = build_method(cfg, small_cnn_factory(dropout=0.3), torch.device("cpu"))
    model = method.model
    x = torch.rand(16, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    y = torch.arange(16) % 10
    before = {k: v.clone() for k, v in model.state_dict().items()}

    torch.manual_seed(7)  # the attack's random start and dropout draw from the global RNG
    loss, metrics = method.loss(x, y)

    model.load_state_dict(before)  # the training forwards moved the BatchNorm running statistics
    torch.manual_seed(7)
    x_adv = method.objective.attack(model, x, y)
    model.train()
    natural = F.cross_entropy(model(x), y)
    robust = F.cross_entropy(model(x_adv), y)
    torch.testing.assert_close(loss, natural + beta * robust)
    assert float(metrics["natural_loss"].value) == pytest.approx(float(natural.detach()))
    assert float(metrics["robust_loss"].value) == pytest.approx(float(robust.detach()))
    # The attack moved the points inside the ball, and the adversarial term carries weight.
    assert 0 < float((x_adv - x).abs().max()) <= cfg.attack.eps + 1e-6
    assert float(robust.detach()) > float(natural.detach())


def test_rst_training_step_updates_the_model(tmp_path):
    cfg = tiny_config(tmp_path, "method.name=rst")
    torch.manual_seed(0)
    method = build_method(cfg, small_cnn_factory(dropout=0.0), torch.device("cpu"))
    method.start_epoch(1)
    before = [p.detach().clone() for p in method.model.parameters()]
    x = torch.rand(16, 1, 12, 12, generator=torch.Generator().manual_seed(2))
    metrics = method.train_step(x, torch.arange(16) % 10)
    assert method.global_step == 1
    assert {"loss", "acc", "adv_acc", "natural_loss", "robust_loss"} <= set(metrics)
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    assert metrics["loss"] == pytest.approx(metrics["natural_loss"] + cfg.method.rst_beta * metrics["robust_loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, method.model.parameters()))


@pytest.mark.parametrize("value", ["-1", "0", ".nan", ".inf"])
def test_invalid_rst_beta_is_a_config_error_naming_the_field(value):
    with pytest.raises(ConfigError, match=r"method\.rst_beta"):
        load_config(None, ["method.name=rst", f"method.rst_beta={value}"])


def test_rst_split_run_with_resume_equals_straight_run(tmp_path):
    """RST is a SingleNetworkMethod: stopped mid-epoch and resumed, it ends with the straight run's weights.
    The straight run's epochs.csv also carries the monitoring attack (val_pgd2) and its seconds."""
    extra = ["method.name=rst", "model.dropout=0.3"]
    straight = train(tiny_config(tmp_path / "a", *extra))
    assert straight.finished and straight.global_step == 12  # (224 - 32) / 32 = 6 steps x 2 epochs
    split = tiny_config(tmp_path / "b", *extra, "train.max_steps=5")
    assert train(split).global_step == 5
    resumed = train(dataclasses.replace(split, train=dataclasses.replace(split.train, max_steps=None)), resume=True)
    assert resumed.finished and resumed.global_step == 12
    a, b = load_checkpoint(tmp_path / "a" / LAST), load_checkpoint(tmp_path / "b" / LAST)
    for k, v in a["networks"]["model"].items():
        assert torch.equal(v, b["networks"]["model"][k]), f"{k} differs after resume"

    with (tmp_path / "a" / "epochs.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for r in rows:
        assert 0.0 <= float(r["val_pgd2"]) <= float(r["val_clean"]) <= 1.0
        assert float(r["validation_seconds"]) >= 0.0
        assert float(r["train_robust_loss"]) > 0 and float(r["train_natural_loss"]) > 0


# ---------------------------------------------------------------------------------------------
# The monitoring attack (trainer/training.py::validate)


def test_validation_attack_leaves_the_training_rng_alone_and_reports_its_seconds(tmp_path):
    # Dropout in the model: a forward that slipped into train mode would draw from the global RNG.
    session = open_session(tiny_config(tmp_path, "method.name=pgd_at", "model.dropout=0.5"))
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    first = validate(session, 1)
    assert torch.equal(torch.get_rng_state(), rng), "validation moved the global RNG (breaks exact resume)"
    again = validate(session, 1)
    assert set(first) == {"val_clean", "val_pgd2", "val_score", "validation_seconds"}
    assert first["validation_seconds"] >= 0
    # Its own generator, seeded by (seed, epoch): the same epoch attacks the same way.
    assert {k: v for k, v in first.items() if k != "validation_seconds"} == \
        {k: v for k, v in again.items() if k != "validation_seconds"}


# ---------------------------------------------------------------------------------------------
# scripts/dropout_table.py


def _table_module():
    spec = importlib.util.spec_from_file_location("dropout_table", REPO / "scripts" / "dropout_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_run(root: Path, method: dict, dropout: float, train_acc, test_acc, lip, sanity=None) -> None:
    run = root / f"{method['name']}_d{dropout:g}"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"method": method, "model": {"dropout": dropout}}))
    for name, acc in (("eval_n50.json", test_acc), ("train_eval_n50.json", train_acc)):
        if acc is not None:
            (run / name).write_text(json.dumps({"models": {"model": {"clean": acc[0], "pgd20": acc[1]}},
                                                "sanity": {"model": sanity or []}}))
    if lip is not None:
        (run / "lipschitz_n20.json").write_text(json.dumps(
            {"models": {"model": {"train": {"mean": lip[0]}, "test": {"mean": lip[1]}}}}))


def test_dropout_table_computes_gaps_orders_rows_and_lists_findings(tmp_path, capsys):
    finding = {"check": "zero_gradients", "message": "3 of 64 points have a zero gradient"}
    _fake_run(tmp_path, {"name": "rst", "rst_beta": 2.0}, 0.5, (0.95, 0.70), (0.90, 0.60), (3.5, 4.25))
    _fake_run(tmp_path, {"name": "trades", "trades_beta": 6.0}, 0.0, (0.80, 0.50), (0.78, 0.45), None,
              sanity=[finding])
    _fake_run(tmp_path, {"name": "natural"}, 0.2, (0.99, 0.0), None, (120.0, 130.0))
    _fake_run(tmp_path, {"name": "pgd_at"}, 0.0, None, (0.85, 0.55), (10.0, 12.0))
    (tmp_path / "not_a_run").mkdir()  # no config.yaml: skipped

    assert _table_module().main([str(tmp_path), "--n", "50", "--lip-n", "20"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    assert [c[0] for c in cells] == ["natural", "PGD-AT", "TRADES(6)", "RST(2)"]
    assert "train PGD-20" in out and "PGD-20 gap" in out
    natural, pgd_at, trades, rst = cells
    assert natural[1:5] == ["0.2", "99.0", "-", "-"] and natural[8:] == ["120.00", "130.00"]
    assert pgd_at[2:5] == ["-", "85.0", "-"] and pgd_at[6] == "55.0"
    assert trades[4] == "+2.0" and trades[7] == "+5.0" and trades[8:] == ["-", "-"]
    assert rst == ["RST(2)", "0.5", "95.0", "90.0", "+5.0", "70.0", "60.0", "+10.0", "3.50", "4.25"]
    assert "trades_d0, test model: [zero_gradients] 3 of 64 points" in out
    assert "train model: [zero_gradients]" in out
