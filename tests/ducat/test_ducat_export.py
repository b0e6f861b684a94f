"""A DUCAT run end to end: training with folded validation, evaluation with the adaptive attack, export and
reload giving the same C-logit outputs."""

import csv
import json

import pytest
import torch
from torch import nn

from generalist_trainer.trainer.checkpoint import load_checkpoint, load_export
from generalist_trainer.trainer.config import EvalConfig, load_config
from generalist_trainer.trainer.errors import CheckpointError
from generalist_trainer.trainer.eval import evaluate_model
from generalist_trainer.trainer.eval.class_fold import FoldedLogits
from generalist_trainer.trainer.eval.saved_models import evaluate_checkpoint
from generalist_trainer.trainer.model_loading import export_checkpoint
from generalist_trainer.trainer.models import build_model
from generalist_trainer.trainer.training import train

TINY = [
    "data.dataset=synthetic", "data.synthetic_shape=[1, 12, 12]", "data.synthetic_train_size=96",
    "data.synthetic_test_size=16", "data.synthetic_classes=4", "data.val_size=32", "data.batch_size=32",
    "data.eval_batch_size=32", "model.arch=small_cnn", "attack.eps=0.1", "attack.step=0.05", "attack.steps=2",
    "train.epochs=2", "train.val_points=16", "train.val_pgd_steps=2", "train.progress=false",
    "train.log_every_steps=1", "eval.num_points=16", "eval.pgd_steps=2", "eval.attacks=[clean, pgd, pgd_lse]",
    # Active from the second of two epochs: both the hard-label phase and the DUCAT phase run.
    "method.ducat.enabled=true", "method.ducat.start=0.75",
]


@pytest.fixture(scope="module")
def ducat_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("ducat_run")
    train(load_config(None, [*TINY, "method.name=pgd_at", f"train.out_dir={run}"]))
    return run


def test_training_switches_ducat_on_late_and_validates_folded(ducat_run):
    rows = list(csv.DictReader((ducat_run / "epochs.csv").open()))
    assert [float(r["ducat"]) for r in rows] == [0.0, 1.0]
    steps = [json.loads(line) for line in (ducat_run / "steps.jsonl").read_text().splitlines()]
    # The DUCAT objective's own metric (adversarial inputs sent to a dummy column) appears with the flag.
    assert [("adv_dummy" in s) for s in steps] == [s["epoch"] == 2 for s in steps]
    for r in rows:
        assert 0.0 <= float(r["val_pgd2"]) <= float(r["val_clean"]) <= 1.0


def test_evaluation_reports_the_adaptive_attack_separately(ducat_run):
    report = evaluate_checkpoint(ducat_run, which="last")
    res = report["models"]["model"]
    assert {"clean", "pgd2", "pgd_lse2"} <= set(res)
    assert 0.0 <= res["pgd_lse2"] <= res["clean"] <= 1.0 and 0.0 <= res["pgd2"] <= res["clean"]


def test_export_then_reload_gives_the_same_c_logits(ducat_run, tmp_path):
    export_checkpoint(ducat_run, tmp_path, which="last")
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["num_classes"] == 4
    assert meta["class_fold"]["fold"] == "max" and meta["class_fold"]["head_classes"] == 8

    reloaded = load_export(tmp_path)
    assert isinstance(reloaded, FoldedLogits) and not reloaded.training

    # The reference: the checkpoint's 2C network, folded by hand (pairwise max), independent of the export.
    state = load_checkpoint(ducat_run / "last.pt")
    network = build_model(load_config(None, TINY).model, num_classes=8, in_channels=1, image_size=12,
                          mean=meta["mean"], std=meta["std"])
    network.load_state_dict(state["networks"]["model"])
    x = torch.rand(6, 1, 12, 12)
    z = network.eval()(x)
    expected = torch.maximum(z[:, :4], z[:, 4:])
    out = reloaded(x)
    assert out.shape == (6, 4)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_plain_export_reloads_as_the_plain_network(tmp_path):
    run = tmp_path / "run"
    train(load_config(None, [*[o for o in TINY if not o.startswith("method.ducat")], "method.name=natural",
                             "train.epochs=1", f"train.out_dir={run}"]))
    export_checkpoint(run, tmp_path / "export", which="last")
    meta = json.loads((tmp_path / "export" / "config.json").read_text())
    assert "class_fold" not in meta
    model = load_export(tmp_path / "export")
    assert not isinstance(model, FoldedLogits) and model(torch.rand(2, 1, 12, 12)).shape == (2, 4)


def test_load_export_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="config.json not found"):
        load_export(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model": {"arch": "nope"}}))
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="config.json"):
        load_export(tmp_path)


def test_pgd_lse_on_a_plain_model_is_pgd_on_its_logits():
    torch.manual_seed(0)
    cfg = load_config(None, [o for o in TINY if not o.startswith("method.ducat")])
    model = build_model(cfg.model, num_classes=4, in_channels=1, image_size=12, mean=(0.5,), std=(0.25,))
    x, y = torch.rand(16, 1, 12, 12), torch.randint(0, 4, (16,))
    pgd = evaluate_model(model, x, y, EvalConfig(attacks=("pgd",), pgd_steps=2), cfg.attack, 16)
    lse = evaluate_model(model, x, y, EvalConfig(attacks=("pgd_lse",), pgd_steps=2), cfg.attack, 16)
    assert lse["pgd_lse2"] == pgd["pgd2"]


class MaskedDummy(nn.Module):
    """2C = 4 logits of a one-pixel input v: class 0 at 1, class 1 at 0, the dummy of 0 at -10 and the
    dummy of 1 at -3 + 8 v. At v = 0.2 the prediction is class 0; within eps 0.4 the dummy of class 1 can
    exceed 1 (v > 0.5), but wherever it is below class 1's own column (v < 0.375) the max-fold passes no
    gradient to v: PGD on the max-fold only wins from random starts that land above 0.375."""

    num_classes = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x.flatten(1)[:, 0]
        const = torch.zeros_like(v)
        return torch.stack([const + 1, const, const - 10, 8 * v - 3], dim=1)


def test_pgd_lse_breaks_the_gradient_masking_of_the_max_fold():
    model = FoldedLogits(MaskedDummy())
    x, y = torch.full((64, 1, 1, 1), 0.2), torch.zeros(64, dtype=torch.long)
    attack_cfg = load_config(None, ["attack.eps=0.4"]).attack
    res = evaluate_model(model, x, y, EvalConfig(attacks=("clean", "pgd", "pgd_lse"), pgd_steps=4), attack_cfg, 64)
    assert res["clean"] == 1.0
    assert res["pgd_lse4"] == 0.0  # the summed probability of class 1 grows with v everywhere
    assert res["pgd4"] > 0.4  # about 72% of random starts fall where the max-fold is flat


# Stopped in epoch 1 (before the activation) or in epoch 2 (mid-epoch, DUCAT already on).
@pytest.mark.parametrize("stop_at", [1, 3])
def test_resume_across_the_activation_equals_a_straight_run(tmp_path, stop_at):
    """DUCAT's on/off state follows from the epoch alone: stopping anywhere and resuming needs nothing more."""
    def config(folder, *extra):
        return load_config(None, [*TINY, "method.name=generalist", "method.generalist.robust_objective=trades",
                                  "train.val_points=0", "eval.attacks=[clean]",
                                  f"train.out_dir={tmp_path / folder}", *extra])

    straight = train(config("a"))
    assert straight.finished and straight.global_step == 4  # 64 training images / 32 = 2 steps x 2 epochs
    first = train(config("b", f"train.max_steps={stop_at}"))
    assert not first.finished and first.global_step == stop_at
    second = train(config("b"), resume=True)
    assert second.finished and second.global_step == 4
    a = load_checkpoint(tmp_path / "a" / "last.pt")["networks"]
    b = load_checkpoint(tmp_path / "b" / "last.pt")["networks"]
    for net in a:
        for key in a[net]:
            assert torch.equal(a[net][key], b[net][key]), f"{net}.{key} differs after resume"


def test_best_checkpoint_is_never_from_before_ducat_switched_on(tmp_path):
    # Three epochs with DUCAT from the third: however validation scores, best.pt must be the end of epoch 3.
    run = tmp_path / "run"
    cfg = load_config(None, [*TINY, "method.name=pgd_at", "train.epochs=3", "method.ducat.start=0.9",
                             f"train.out_dir={run}"])
    method_epochs = [float(r["ducat"]) for r in csv.DictReader((train(cfg).run_dir / "epochs.csv").open())]
    assert method_epochs == [0.0, 0.0, 1.0]
    assert load_checkpoint(run / "best.pt")["position"]["epoch"] == 4  # written after epoch 3

