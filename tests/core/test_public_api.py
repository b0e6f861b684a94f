"""The Python API (`import generalist_trainer`): load_config, load_model from a run whose data folder was deleted
(checkpoints
carry the model's metadata), old checkpoints without it, export without the data, and the lazy package root."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

import generalist_trainer as gt
from generalist_trainer.trainer.checkpoint import load_checkpoint, save_checkpoint
from generalist_trainer.trainer.cli import main
from generalist_trainer.trainer.errors import CheckpointError, ConfigError
from generalist_trainer.trainer.eval.class_fold import FoldedLogits
from generalist_trainer.trainer.model_loading import eval_model_from_checkpoint, export_checkpoint
from generalist_trainer.trainer.session import METADATA_KEY, saved_network_keys, session_from_checkpoint
from tests.core.idx_runs import idx_run_config, write_small_fashion_mnist

REPO = Path(__file__).resolve().parents[2]
RUNS = {
    "pgd_at": ["method.name=pgd_at"],
    # DUCAT from the first epoch: a 2C head folded to C; Generalist: three evaluated models, the global one shipped.
    "generalist_ducat": ["method.name=generalist", "method.ducat.enabled=true", "method.ducat.start=0.0"],
}


@dataclass
class TrainedRun:
    run_dir: Path
    data_dir: Path
    inputs: torch.Tensor  # (5, 1, 12, 12) in [0, 1]
    # Logits of each evaluated model of the session rebuilt with the data present, as it was trained (the engine's
    # memory format), and the same model in the default one.
    trained_logits: dict[str, torch.Tensor]
    contiguous_logits: dict[str, torch.Tensor]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, TrainedRun]:
    """Each run trained, its session's outputs recorded while the data is there; then the data folder deleted."""
    trained = {}
    for name, extra in RUNS.items():
        root = tmp_path_factory.mktemp(name)
        data_dir = write_small_fashion_mnist(root / "data")
        assert gt.train(idx_run_config(data_dir, root / "run", *extra)).finished
        session, _ = session_from_checkpoint(str(root / "run" / "best.pt"), "cpu")
        x = torch.rand(5, 1, 12, 12, generator=torch.Generator().manual_seed(3))
        models = session.method.eval_models()
        with torch.no_grad():
            as_trained = {k: m.eval()(x) for k, m in models.items()}
            contiguous = {k: m.to(memory_format=torch.contiguous_format)(x) for k, m in models.items()}
        shutil.rmtree(data_dir)
        trained[name] = TrainedRun(root / "run", data_dir, x, as_trained, contiguous)
    return trained


@pytest.mark.parametrize("name", list(RUNS))
def test_load_model_works_after_the_data_folder_is_deleted(runs, name):
    run = runs[name]
    assert not run.data_dir.exists()
    model = gt.load_model(run.run_dir)
    assert isinstance(model, nn.Module) and not model.training
    shipped = next(iter(run.trained_logits))
    with torch.no_grad():
        logits = model(run.inputs)
    assert logits.shape == (5, 10)  # C logits, DUCAT's 2C head folded
    assert isinstance(model, FoldedLogits) == (name == "generalist_ducat")
    # The same weights as the checkpoint's network, bit for bit; the same outputs as the session's model (exactly in
    # the same memory format; the trained one is channels_last, which rounds differently).
    network = model.network if isinstance(model, FoldedLogits) else model
    saved = load_checkpoint(run.run_dir / "best.pt")["networks"][shipped]
    assert all(torch.equal(v, saved[k]) for k, v in network.state_dict().items())
    assert torch.equal(logits, run.contiguous_logits[shipped])
    torch.testing.assert_close(logits, run.trained_logits[shipped])


def test_load_model_picks_another_evaluated_model_and_a_checkpoint_file(runs):
    run = runs["generalist_ducat"]
    assert list(run.trained_logits) == ["global", "robust", "natural"]
    robust = gt.load_model(run.run_dir / "last.pt", name="robust")
    with torch.no_grad():
        assert torch.equal(robust(run.inputs), run.contiguous_logits["robust"])
    with pytest.raises(ConfigError, match=r"model 'expert': checkpoint .*best.pt holds the models \['global', "):
        gt.load_model(run.run_dir, name="expert")


def test_checkpoints_carry_plain_metadata(runs):
    state = load_checkpoint(runs["generalist_ducat"].run_dir / "best.pt")  # weights_only=True
    meta = state[METADATA_KEY]
    assert METADATA_KEY == "model_metadata"  # the literal trainer/training.py `_state` writes
    assert {k: meta[k] for k in ("num_classes", "in_channels", "image_size", "mean", "std", "dataset")} == {
        "num_classes": 10, "in_channels": 1, "image_size": 12, "mean": [0.2860], "std": [0.3530],
        "dataset": "fashion-mnist"}
    assert meta["eval_models"] == {"global": "global", "robust": "robust", "natural": "natural"}  # model: network
    assert meta["class_fold"]["fold"] == "max" and meta["class_fold"]["head_classes"] == 20
    assert "class_fold" not in load_checkpoint(runs["pgd_at"].run_dir / "best.pt")[METADATA_KEY]


def test_export_needs_no_data_and_reloads_the_same_model(runs, tmp_path):
    run = runs["generalist_ducat"]
    export_checkpoint(run.run_dir, tmp_path / "export")
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["exported_network"] == "global" and config["method"] == "generalist"
    assert "eval_models" not in config and config["class_fold"]["output_classes"] == 10
    exported = gt.load_model(tmp_path / "export")
    with torch.no_grad():
        assert torch.equal(exported(run.inputs), run.contiguous_logits["global"])
    with pytest.raises(ConfigError, match="holds only the model 'global'"):
        gt.load_model(tmp_path / "export", name="robust")


def _old_format_copy(run: TrainedRun) -> Path:
    """best.pt as the code before model metadata wrote it."""
    state = load_checkpoint(run.run_dir / "best.pt")
    del state[METADATA_KEY], state["format_version"]
    old = run.run_dir.parent / "old.pt"
    save_checkpoint(old, state)
    return old


@pytest.mark.parametrize("name", list(RUNS))
def test_an_old_checkpoint_loads_with_a_note_while_its_data_is_there(runs, name, caplog):
    run = runs[name]
    old = _old_format_copy(run)
    write_small_fashion_mnist(run.data_dir)
    try:
        with caplog.at_level(logging.INFO, logger="generalist_trainer"):
            model = gt.load_model(old)
    finally:
        shutil.rmtree(run.data_dir)
    notes = [r for r in caplog.records if "written before checkpoints carried the model's metadata" in r.getMessage()]
    assert len(notes) == 1 and "\n" not in notes[0].getMessage() and str(old) in notes[0].getMessage()
    with torch.no_grad():
        assert torch.equal(model(run.inputs), run.contiguous_logits[next(iter(run.contiguous_logits))])


def test_an_old_checkpoint_without_its_data_is_one_line_naming_what_is_missing(runs, tmp_path, capsys):
    run = runs["pgd_at"]
    old = _old_format_copy(run)
    with pytest.raises(CheckpointError) as info:
        gt.load_model(old)
    message = str(info.value)
    assert "\n" not in message and f"checkpoint {old}: has no model metadata" in message
    assert f"{run.data_dir}: no such folder" in message
    assert main(["export", str(old), "--out", str(tmp_path / "export")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: checkpoint {old}: has no model metadata")
    assert not (tmp_path / "export").exists() or not any((tmp_path / "export").iterdir())


def test_load_model_errors_name_the_path(tmp_path):
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'nothing'}: not found"):
        gt.load_model(tmp_path / "nothing")
    with pytest.raises(CheckpointError, match="no best.pt"):
        gt.load_model(tmp_path)  # an empty folder: neither a run nor an export
    with pytest.raises(ConfigError, match="device 'gpu0'"):
        gt.load_model(tmp_path, device="gpu0")


def test_load_config_takes_a_dict_and_leaves_it_alone():
    given = {"method": {"name": "trades"}, "train": {"epochs": 3}}
    cfg = gt.load_config(given, ("train.epochs=5", "attack.eps=0.2"))
    assert (cfg.method.name, cfg.train.epochs, cfg.attack.eps) == ("trades", 5, 0.2)
    assert given == {"method": {"name": "trades"}, "train": {"epochs": 3}}
    assert gt.load_config(None, "train.epochs=2").train.epochs == 2
    with pytest.raises(ConfigError, match="config field 'method.name' = 'nope'"):
        gt.load_config({"method": {"name": "nope"}})


def test_the_package_root_imports_lazily_and_exports_the_trainers_own_objects():
    probe = ("import sys, generalist_trainer as gt; before = 'torch' in sys.modules; "
             "from generalist_trainer.trainer.attacks import PGD; "
             "print(before, gt.attacks.PGD is PGD, gt.attacks.CWLinf.__module__, "
             "gt.attacks.TradesKL.__module__, sorted(set(gt.__all__) <= set(dir(gt)) for _ in [0]))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True", "generalist_trainer.trainer.attacks.cw",
                                   "generalist_trainer.trainer.attacks.trades_kl", "[True]"]
    assert gt.load_model.__module__ == "generalist_trainer.trainer.model_loading"
    assert gt.evaluate.__module__ == "generalist_trainer.trainer.eval.any_model"
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        gt.nope  # noqa: B018


def test_metadata_maps_each_evaluated_model_to_its_saved_network():
    class TwoNetworks:  # a method whose first evaluated model is computed, not saved (none of ours is, yet)
        def __init__(self):
            self.saved, self.computed = nn.Linear(2, 2), nn.Linear(2, 2)

        def networks(self):
            return {"saved_net": self.saved}

        def eval_models(self):
            return {"average": self.computed, "folded": FoldedLogits(self.saved), "plain": self.saved}

    keys = saved_network_keys(TwoNetworks())
    assert keys == {"average": None, "folded": "saved_net", "plain": "saved_net"}
    meta = {"eval_models": keys}
    with pytest.raises(CheckpointError, match="model 'average' is computed by its method, not saved as a network"):
        eval_model_from_checkpoint({"networks": {}}, "x.pt", meta=meta)


@pytest.mark.parametrize("make", [
    lambda: gt.attacks.PGD(eps=0.1, step=0.03, steps=5),
    lambda: gt.attacks.PGD(eps=0.5, step=0.2, steps=5, norm="l2"),
    lambda: gt.attacks.CWLinf(eps=0.1, step=0.03, steps=5),
    lambda: gt.attacks.TradesKL(eps=0.1, step=0.03, steps=5),
], ids=["pgd_linf", "pgd_l2", "cw_linf", "trades_kl"])
def test_the_attacks_work_alone_on_any_module_with_the_contract(make):
    """A module the trainer never built (BatchNorm in train mode, gradients on): inputs stay in the ball and in
    [0, 1], the module's mode, BatchNorm statistics and parameter gradients are left as they were."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 10 * 10, 10))
    model.train()
    x, y = torch.rand(6, 1, 12, 12), torch.randint(0, 10, (6,))
    stats = model[1].running_mean.clone()
    attack = make()
    x_adv = attack(model, x, y)
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert 0.0 <= float(x_adv.min()) and float(x_adv.max()) <= 1.0
    distance = (x_adv - x).flatten(1).norm(dim=1) if getattr(attack, "norm", "linf") == "l2" else (x_adv - x).abs()
    assert float(distance.max()) <= attack.eps + 1e-5
    assert model.training and model[1].training  # run in eval mode, its flags restored
    assert torch.equal(model[1].running_mean, stats) and all(p.grad is None for p in model.parameters())


def test_resume_continues_a_stopped_run_to_the_uninterrupted_result(tmp_path):
    from tests.reliability.runs import assert_same_state

    data_dir = write_small_fashion_mnist(tmp_path / "data")
    whole = gt.train(idx_run_config(data_dir, tmp_path / "whole", "train.epochs=2"))
    stopped = gt.train(idx_run_config(data_dir, tmp_path / "parts", "train.epochs=2", "train.max_steps=3"))
    assert whole.finished and not stopped.finished
    # The checkpoint's own config; max_steps is one of the train.* keys a resume may change.
    assert gt.resume(stopped.run_dir, ["train.max_steps=null"]).finished
    assert_same_state(whole.run_dir / "last.pt", stopped.run_dir / "last.pt")


def test_resume_keeps_the_run_length_unless_asked_and_refuses_other_changes(tmp_path):
    data_dir = write_small_fashion_mnist(tmp_path / "data")
    run = gt.train(idx_run_config(data_dir, tmp_path / "run"))
    with pytest.raises(ConfigError, match="started for 1 epochs.*change_length=True"):
        gt.resume(run.run_dir, ["train.epochs=2"])
    with pytest.raises(ConfigError, match="a resumed run keeps its config"):
        gt.resume(run.run_dir, ["model.arch=mlp"])
    longer = gt.resume(run.run_dir, ["train.epochs=2"], change_length=True)
    assert longer.finished
    epochs = (longer.run_dir / "epochs.csv").read_text().splitlines()[1:]
    assert [row.split(",")[0] for row in epochs] == ["1", "2"]
