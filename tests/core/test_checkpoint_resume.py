"""Checkpoints: atomic writes, weights_only loading, clear errors; exact resume on the CPU."""

import dataclasses
import os
import stat

import pytest
import torch

from generalist_trainer.trainer.checkpoint import LAST, atomic_write, load_checkpoint
from generalist_trainer.trainer.config import load_config
from generalist_trainer.trainer.errors import CheckpointError, ConfigError
from generalist_trainer.trainer.training import train

TINY = [
    "data.dataset=synthetic", "data.synthetic_shape=[1, 12, 12]", "data.synthetic_train_size=224",
    "data.synthetic_test_size=64", "data.val_size=32", "data.batch_size=32", "data.eval_batch_size=64",
    "model.arch=small_cnn", "attack.eps=0.1", "attack.step=0.05", "attack.steps=2",
    "train.epochs=2", "train.val_points=32", "train.val_pgd_steps=2", "train.progress=false",
    "train.log_every_steps=1", "eval.num_points=32",
]


def tiny_config(tmp_path, *extra):
    return load_config(None, [*TINY, f"train.out_dir={tmp_path}", *extra])


def all_tensors(run_dir):
    state = load_checkpoint(run_dir / LAST)
    return state, {f"{net}.{k}": v for net, sd in state["networks"].items() for k, v in sd.items()}


@pytest.mark.parametrize("method, extra", [
    ("generalist", ["method.generalist.sync_start=0.5", "model.dropout=0.3"]),  # epoch 2 syncs every step
    ("generalist", ["method.generalist.sync_mode=epoch_end", "method.generalist.robust_objective=trades"]),
    ("pgd_at", ["model.dropout=0.3"]),
    ("trades", []),
])
def test_split_run_with_resume_equals_straight_run(tmp_path, method, extra):
    """N steps straight vs N/2 (stopped mid-epoch) + resume + the rest: identical parameters."""
    straight = tiny_config(tmp_path / "a", f"method.name={method}", *extra)
    result = train(straight)
    assert result.finished and result.global_step == 12  # (224 - 32) / 32 = 6 steps x 2 epochs
    split = tiny_config(tmp_path / "b", f"method.name={method}", *extra, "train.max_steps=5")
    first = train(split)
    assert not first.finished and first.global_step == 5
    second = train(dataclasses.replace(split, train=dataclasses.replace(split.train, max_steps=None)),
                   resume=True)
    assert second.finished and second.global_step == 12
    state_a, a = all_tensors(tmp_path / "a")
    state_b, b = all_tensors(tmp_path / "b")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    assert state_a["position"] == state_b["position"]
    for name, opt in state_a["optimizers"].items():
        for pid, s in opt["state"].items():
            assert torch.equal(s["momentum_buffer"], state_b["optimizers"][name]["state"][pid]["momentum_buffer"])
    # The resumed run's logs hold each epoch once.
    epochs = (tmp_path / "b" / "epochs.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in epochs[1:]] == ["1", "2"]


def test_training_refuses_to_overwrite_an_existing_run(tmp_path):
    cfg = tiny_config(tmp_path, "method.name=natural", "train.max_steps=1")
    train(cfg)
    with pytest.raises(ConfigError, match="already holds a run"):
        train(cfg)


def test_unwritable_output_folder_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match="train.out_dir"):
        train(tiny_config(blocker / "run", "method.name=natural"))


def test_checkpoint_loads_weights_only_and_holds_everything(tmp_path):
    train(tiny_config(tmp_path, "method.name=generalist", "train.max_steps=3"))
    state = torch.load(tmp_path / LAST, weights_only=True)
    assert set(state["networks"]) == {"robust", "natural", "avg_robust", "avg_natural", "global"}
    assert set(state["optimizers"]) == {"robust", "natural"}
    assert state["position"] == {"epoch": 1, "batch": 3, "global_step": 3}
    assert state["config"]["method"]["name"] == "generalist"
    assert {"torch", "numpy", "python"} <= set(state["rng"])


def test_truncated_checkpoint_is_reported_with_its_name(tmp_path):
    train(tiny_config(tmp_path, "method.name=natural", "train.max_steps=1"))
    data = (tmp_path / LAST).read_bytes()
    bad = tmp_path / "cut.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pt"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_atomic_write_keeps_the_previous_file_when_writing_fails(tmp_path):
    target = tmp_path / "x.bin"
    atomic_write(target, lambda f: f.write(b"old"))

    def failing(f):
        f.write(b"half")
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError):
        atomic_write(target, failing)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]


@pytest.mark.parametrize("umask, expected_mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_write_gives_the_mode_a_plain_open_would(tmp_path, umask, expected_mode):
    # mkstemp's temporary file is 0600; the published file must follow the umask like any other file.
    previous = os.umask(umask)
    try:
        atomic_write(tmp_path / "result.json", lambda f: f.write(b"{}"))
        (tmp_path / "plain.json").write_bytes(b"{}")
        umask_after = os.umask(umask)
    finally:
        os.umask(previous)
    assert umask_after == umask  # reading the umask left it as it was
    assert stat.S_IMODE((tmp_path / "result.json").stat().st_mode) == expected_mode
    assert stat.S_IMODE((tmp_path / "plain.json").stat().st_mode) == expected_mode
