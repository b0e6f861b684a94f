"""The NaN/Inf guard: what it checks, what its message names, and that nothing poisoned reaches a checkpoint."""

import csv
import json
import math

import pytest
import torch
from torch import nn

import trainer.training as training
from tests.reliability.runs import STEPS, tiny_config
from trainer.checkpoint import BEST, LAST, load_checkpoint
from trainer.cli import main
from trainer.errors import TrainerError
from trainer.guards import FiniteGuard, NonFiniteError, first_non_finite, is_loss_like, network_of_metric

# No redistribution in epoch 1 (sync only from epoch 2): a poisoned G stays in G.
IN_PROCESS = ("train.deterministic=false", "train.threads=0", "method.generalist.sync_start=1.0")


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def test_loss_like_metrics_and_their_network():
    assert [m for m in ("loss", "robust_loss", "kl", "robust_kl", "adv_acc", "decay", "lr") if is_loss_like(m)] \
        == ["loss", "robust_loss", "kl", "robust_kl"]
    nets = ["robust", "natural", "avg_robust", "avg_natural", "global"]
    assert network_of_metric("robust_loss", nets) == "robust"
    assert network_of_metric("avg_robust_loss", nets) == "avg_robust"
    assert network_of_metric("loss", ["model"]) == "model"
    assert network_of_metric("loss", nets) == "the method's combined objective"


def test_first_non_finite_skips_integer_tensors_and_finds_the_first_bad_one():
    good, bad = torch.ones(3), torch.tensor([1.0, math.inf])
    assert first_non_finite([("a", good), ("n", torch.tensor([7]))]) is None
    name, tensor = first_non_finite([("a", good), ("b", bad), ("c", torch.tensor([math.nan]))])
    assert name == "b" and torch.equal(tensor, bad)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_loss_names_step_epoch_network_quantity_and_last_good(tmp_path, value):
    guard = FiniteGuard(every_steps=0)
    guard.after_step({"robust_loss": 1.0, "natural_loss": 0.5}, step=6, epoch=2, networks={"robust": _net()})
    guard.record_checkpoint(tmp_path / LAST, 5)
    with pytest.raises(NonFiniteError) as info:
        guard.after_step({"robust_loss": 1.0, "natural_loss": value, "natural_acc": 0.5}, step=7, epoch=2,
                         networks={"robust": _net(), "natural": _net()})
    message = str(info.value)
    assert f"non-finite natural_loss = {value} at step 7 (epoch 2) in network 'natural'" in message
    assert f"the last good checkpoint, {tmp_path / LAST} (step 5), is intact" in message
    assert isinstance(info.value, TrainerError) and isinstance(info.value, FloatingPointError)


def test_without_a_checkpoint_yet_the_message_says_so():
    with pytest.raises(NonFiniteError, match="no checkpoint had been written yet"):
        FiniteGuard(0).after_step({"loss": math.nan}, step=1, epoch=1, networks={"model": _net()})


def test_skipped_steps_are_counted_and_reported_not_failures(capsys):
    guard = FiniteGuard(every_steps=0)
    guard.after_step({"loss": math.inf, "skipped_steps": 1}, step=3, epoch=1, networks={"model": _net()})
    guard.after_step({"loss": 0.7, "skipped_steps": 0}, step=4, epoch=1, networks={"model": _net()})
    guard.after_step({"robust_loss": math.nan, "skipped_steps": 2}, step=5, epoch=1, networks={"model": _net()})
    assert guard.skipped_steps == 3
    out = capsys.readouterr().out
    assert "step 3 (epoch 1): the loss scaler skipped 1 optimiser step(s)" in out and "3 skipped so far" in out
    with pytest.raises(NonFiniteError, match="loss = inf at step 6"):
        guard.after_step({"loss": math.inf, "skipped_steps": 0}, step=6, epoch=1, networks={"model": _net()})


def test_parameters_are_checked_every_n_steps_and_name_the_tensor():
    net = _net()
    with torch.no_grad():
        net[1].running_var[2] = math.nan  # a buffer no loss of this step would show
    guard = FiniteGuard(every_steps=4)
    for step in (1, 2, 3):
        guard.after_step({"loss": 0.1}, step=step, epoch=1, networks={"model": net})
    with pytest.raises(NonFiniteError, match=r"non-finite parameter '1.running_var' \(1 NaN and 0 Inf among its "
                                             r"4 values\) at step 4 \(epoch 1\) in network 'model'"):
        guard.after_step({"loss": 0.1}, step=4, epoch=1, networks={"model": net})
    FiniteGuard(every_steps=0).after_step({"loss": 0.1}, step=4, epoch=1, networks={"model": net})


def test_optimizer_state_is_checked_when_given():
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    guard = FiniteGuard(every_steps=0)
    guard.check_networks(step=1, epoch=1, networks={"model": net}, optimizers={"model": opt})
    with torch.no_grad():
        opt.state[net[2].weight]["momentum_buffer"][0, 0] = math.inf
    with pytest.raises(NonFiniteError, match=r"optimiser state 'momentum_buffer of parameter #4' .* network 'model'"):
        guard.check_networks(step=1, epoch=1, networks={"model": net}, optimizers={"model": opt})


def _tamper_after_step(monkeypatch, at_step, tamper):
    """Wrap the method's train_step so that `tamper(method, metrics)` runs after step `at_step`."""
    real_open = training.open_session

    def open_session(cfg):
        session = real_open(cfg)
        method, step = session.method, session.method.train_step

        def train_step(x, y):
            metrics = step(x, y)
            if method.global_step == at_step:
                tamper(method, metrics)
            return metrics

        method.train_step = train_step
        return session

    monkeypatch.setattr(training, "open_session", open_session)


def _poison(network):
    with torch.no_grad():
        next(network.parameters()).view(-1)[0] = math.nan


def _all_finite(path):
    state = load_checkpoint(path)
    return all(torch.isfinite(t).all() for sd in state["networks"].values() for t in sd.values()
               if t.is_floating_point())


def test_poisoned_averaged_network_is_caught_before_the_checkpoint(tmp_path, monkeypatch):
    # Generalist's global model is in no loss: only the parameter check can see it.
    _tamper_after_step(monkeypatch, 3, lambda method, metrics: _poison(method.global_model))
    cfg = tiny_config(tmp_path, *IN_PROCESS, "train.checkpoint_every_steps=2", "train.finite_check_every_steps=0")
    with pytest.raises(NonFiniteError) as info:
        training.train(cfg)
    message = str(info.value)
    assert "non-finite parameter '" in message and "at step 4 (epoch 1) in network 'global'" in message
    assert f"the last good checkpoint, {tmp_path / LAST} (step 2), is intact" in message
    assert load_checkpoint(tmp_path / LAST)["position"]["global_step"] == 2 and _all_finite(tmp_path / LAST)
    assert not (tmp_path / BEST).exists()


def test_poisoned_expert_stops_at_the_next_loss(tmp_path, monkeypatch):
    _tamper_after_step(monkeypatch, 3, lambda method, metrics: _poison(method.robust))
    cfg = tiny_config(tmp_path, *IN_PROCESS, "train.checkpoint_every_steps=2", "train.finite_check_every_steps=0")
    with pytest.raises(NonFiniteError, match=r"non-finite robust_loss = nan at step 4 \(epoch 1\) in network "
                                             r"'robust'.*last.pt \(step 2\), is intact"):
        training.train(cfg)
    assert load_checkpoint(tmp_path / LAST)["position"]["global_step"] == 2 and _all_finite(tmp_path / LAST)


def test_periodic_check_catches_it_between_checkpoints(tmp_path, monkeypatch):
    _tamper_after_step(monkeypatch, 1, lambda method, metrics: _poison(method.avg_natural))
    cfg = tiny_config(tmp_path, *IN_PROCESS, "train.finite_check_every_steps=2")
    with pytest.raises(NonFiniteError, match="at step 2 .* network 'avg_natural'.*no checkpoint had been written"):
        training.train(cfg)
    assert not (tmp_path / LAST).exists()


def test_skipped_steps_do_not_stop_training_and_are_logged(tmp_path, monkeypatch, capsys):
    def scaler_skipped(method, metrics):
        metrics.update(robust_loss=math.inf, skipped_steps=1)

    _tamper_after_step(monkeypatch, 2, scaler_skipped)
    result = training.train(tiny_config(tmp_path, *IN_PROCESS))
    assert result.finished and result.global_step == STEPS
    assert "step 2 (epoch 1): the loss scaler skipped 1 optimiser step(s)" in capsys.readouterr().out
    rows = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r.get("skipped_steps")] == [2]


def test_cli_exits_2_with_the_guard_message(tmp_path, monkeypatch, capsys):
    _tamper_after_step(monkeypatch, 2, lambda method, metrics: metrics.update(natural_loss=math.nan))
    cfg_args = [f"train.out_dir={tmp_path}", *IN_PROCESS]
    from tests.reliability.runs import TINY
    assert main(["train", "--no-eval", *TINY, *cfg_args]) == 2
    assert "error: non-finite natural_loss = nan at step 2 (epoch 1) in network 'natural'" in capsys.readouterr().err


def test_fp16_training_with_a_real_loss_scaler_counts_its_skipped_steps_and_finishes(tmp_path, monkeypatch, capsys):
    """engine.precision=fp16 on the CPU: torch.amp.GradScaler("cpu") is the scaler CUDA runs use. Started at a
    scale of 2^24, the first scaled gradients overflow fp16, so the scaler skips steps (halving its scale)
    until they fit: counted, printed and logged, and the run goes on to the end with finite weights."""
    from trainer.engine import precision

    real_init = precision.LossScaler.__init__

    def high_initial_scale(self, device, enabled):
        real_init(self, device, enabled)
        self.scaler = torch.amp.GradScaler(device.type, init_scale=2.0**24, enabled=enabled)

    monkeypatch.setattr(precision.LossScaler, "__init__", high_initial_scale)
    result = training.train(tiny_config(tmp_path, *IN_PROCESS, "engine.precision=fp16"))
    assert result.finished and result.global_step == STEPS
    rows = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    skipped = {r["step"]: r["skipped_steps"] for r in rows}
    assert len(skipped) == STEPS and sum(skipped.values()) >= 1 and skipped[1] >= 1
    out = capsys.readouterr().out
    assert f"step 1 (epoch 1): the loss scaler skipped {int(skipped[1])} optimiser step(s)" in out
    assert f"{int(sum(skipped.values()))} skipped so far" in out
    with (tmp_path / "epochs.csv").open(newline="") as f:
        epochs = list(csv.DictReader(f))
    # The epoch row counts the skipped steps of its epoch (a sum, not a mean over the steps).
    assert [float(e["train_skipped_steps"]) for e in epochs] == [
        sum(v for s, v in skipped.items() if (s - 1) // (STEPS // 2) == k) for k in range(2)]
    state = load_checkpoint(tmp_path / LAST)
    scales = {name: s["scale"] for name, s in state["method_state"]["loss_scalers"].items()}
    assert set(scales) == {"robust", "natural"} and all(scale < 2.0**24 for scale in scales.values())
    assert _all_finite(tmp_path / LAST)
