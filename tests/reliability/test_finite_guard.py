"""The NaN/Inf guard: what it checks, what its message names, and that nothing poisoned reaches a checkpoint."""

import csv
import json
import logging
import math

import pytest
import torch
from torch import nn

import generalist_trainer.trainer.training as training
from generalist_trainer.trainer.checkpoint import BEST, LAST, load_checkpoint
from generalist_trainer.trainer.cli import main
from generalist_trainer.trainer.engine.step_metrics import (
    StepAccumulator,
    for_network,
    loss_metric,
    mean_metric,
    skipped_metric,
)
from generalist_trainer.trainer.errors import TrainerError
from generalist_trainer.trainer.guards import FiniteGuard, NonFiniteError, first_non_finite
from tests.reliability.runs import STEPS, tiny_config

# No redistribution in epoch 1 (sync only from epoch 2): a poisoned G stays in G.
IN_PROCESS = ("train.deterministic=false", "train.threads=0", "method.generalist.sync_start=1.0")
CPU = torch.device("cpu")


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def _t(value):
    return torch.tensor(value, dtype=torch.float32)


class Run:
    """A guard and the training loop's StepAccumulator, driven as the loop drives them."""

    def __init__(self, every_steps: int = 0):
        self.guard, self.steps = FiniteGuard(every_steps), StepAccumulator(CPU)

    def step(self, metrics, *, step, networks):
        self.steps.add(metrics, step)
        self.guard.after_step(self.steps, step=step, networks=networks)

    def boundary(self, *, epoch, networks):
        self.guard.check(self.steps.read(), epoch=epoch, networks=networks)

    def logged_step(self, metrics, *, step, epoch, networks):
        """A step at train.log_every_steps = 1: every step is a boundary."""
        self.step(metrics, step=step, networks=networks)
        self.boundary(epoch=epoch, networks=networks)


def test_the_guard_knows_losses_by_their_type_not_their_name():
    nets = {"robust": _net(), "natural": _net()}
    # Named like a loss but typed as a plain value (an accuracy, a fraction): not the guard's business.
    Run().logged_step({"robust_loss": mean_metric(_t(math.nan))}, step=1, epoch=1, networks=nets)
    # Named like no loss, typed as the robust expert's loss term: checked, and the network is the one it trains.
    metrics = for_network({"kl": loss_metric(_t(math.inf))}, "robust")
    with pytest.raises(NonFiniteError, match="non-finite kl = inf at step 2 .* in network 'robust'"):
        Run().logged_step(metrics, step=2, epoch=1, networks=nets)
    # A loss that names no network belongs to the method's combined objective.
    with pytest.raises(NonFiniteError, match="in network 'the method's combined objective'"):
        Run().logged_step({"total": loss_metric(_t(-math.inf))}, step=3, epoch=1, networks=nets)


def test_first_non_finite_skips_integer_tensors_and_finds_the_first_bad_one():
    good, bad = torch.ones(3), torch.tensor([1.0, math.inf])
    assert first_non_finite([("a", good), ("n", torch.tensor([7]))]) is None
    name, tensor = first_non_finite([("a", good), ("b", bad), ("c", torch.tensor([math.nan]))])
    assert name == "b" and torch.equal(tensor, bad)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_loss_names_step_epoch_network_quantity_and_last_good(tmp_path, value):
    run = Run()
    run.logged_step({"robust_loss": loss_metric(_t(1.0), "robust"), "natural_loss": loss_metric(_t(0.5), "natural")},
                    step=6, epoch=2, networks={"robust": _net()})
    run.guard.record_checkpoint(tmp_path / LAST, 5)
    with pytest.raises(NonFiniteError) as info:
        run.logged_step({"robust_loss": loss_metric(_t(1.0), "robust"),
                         "natural_loss": loss_metric(_t(value), "natural"), "natural_acc": mean_metric(_t(0.5))},
                        step=7, epoch=2, networks={"robust": _net(), "natural": _net()})
    message = str(info.value)
    assert f"non-finite natural_loss = {value} at step 7 (epoch 2) in network 'natural'" in message
    assert f"the last good checkpoint, {tmp_path / LAST} (step 5), is intact" in message
    assert isinstance(info.value, TrainerError) and isinstance(info.value, FloatingPointError)


def test_read_at_a_later_boundary_the_error_still_names_the_step_it_happened_at():
    """Steps 3..8 without a read in between (log_every_steps = 0): the device kept the first failure, step 5's
    natural loss, although steps 6-8 went non-finite too; a host float loss is checked the same way."""
    run, nets = Run(), {"robust": _net(), "natural": _net()}
    for step in range(3, 9):
        bad = step >= 5
        run.step({"robust_loss": loss_metric(_t(math.inf if step >= 7 else 1.0), "robust"),
                  "natural_loss": loss_metric(_t(math.nan if bad else 0.5), "natural")}, step=step, networks=nets)
    with pytest.raises(NonFiniteError, match=r"non-finite natural_loss = nan at step 5 \(epoch 3\) in network "
                                             r"'natural'"):
        run.boundary(epoch=3, networks=nets)
    run = Run()
    run.step({"loss": loss_metric(_t(1.0), "model")}, step=1, networks=nets)
    run.step({"loss": loss_metric(_t(1.0), "model"), "host_loss": loss_metric(math.inf, "model")}, step=2,
             networks=nets)
    with pytest.raises(NonFiniteError, match="non-finite host_loss = inf at step 2"):
        run.boundary(epoch=1, networks=nets)


def test_without_a_checkpoint_yet_the_message_says_so():
    with pytest.raises(NonFiniteError, match="no checkpoint had been written yet"):
        Run().logged_step({"loss": loss_metric(_t(math.nan), "model")}, step=1, epoch=1, networks={"model": _net()})


def test_skipped_steps_are_counted_and_reported_not_failures(caplog):
    caplog.set_level(logging.INFO, logger="generalist_trainer")  # the guard logs its notes; the CLI prints them
    run, nets = Run(), {"model": _net()}
    run.logged_step({"loss": loss_metric(_t(math.inf), "model"), "skipped_steps": skipped_metric(_t(1))}, step=3,
                    epoch=1, networks=nets)
    run.logged_step({"loss": loss_metric(_t(0.7), "model"), "skipped_steps": skipped_metric(_t(0))}, step=4, epoch=1,
                    networks=nets)
    run.logged_step({"robust_loss": loss_metric(_t(math.nan), "model"), "skipped_steps": skipped_metric(_t(2))},
                    step=5, epoch=1, networks=nets)
    assert run.guard.skipped_steps == 3
    out = caplog.text
    assert "step 3 (epoch 1): the loss scaler skipped 1 optimiser step(s)" in out and "3 skipped so far" in out
    with pytest.raises(NonFiniteError, match="loss = inf at step 6"):
        run.logged_step({"loss": loss_metric(_t(math.inf), "model"), "skipped_steps": skipped_metric(_t(0))}, step=6,
                        epoch=1, networks=nets)
    # Read every few steps, the report covers the steps since the last read.
    run = Run()
    for step in (1, 2, 3):
        run.step({"loss": loss_metric(_t(0.5), "model"), "skipped_steps": skipped_metric(_t(step % 2))}, step=step,
                 networks=nets)
    run.boundary(epoch=1, networks=nets)
    assert "steps 1-3 (epoch 1): the loss scaler skipped 2 optimiser step(s)" in caplog.text


def test_parameters_are_checked_every_n_steps_and_name_the_tensor():
    net = _net()
    with torch.no_grad():
        net[1].running_var[2] = math.nan  # a buffer no loss of this step would show
    run = Run(every_steps=4)
    for step in (1, 2, 3):
        run.logged_step({"loss": loss_metric(_t(0.1), "model")}, step=step, epoch=1, networks={"model": net})
    with pytest.raises(NonFiniteError, match=r"non-finite parameter '1.running_var' \(1 NaN and 0 Inf among its "
                                             r"4 values\) at step 4 \(epoch 1\) in network 'model'"):
        run.logged_step({"loss": loss_metric(_t(0.1), "model")}, step=4, epoch=1, networks={"model": net})
    Run(every_steps=0).logged_step({"loss": loss_metric(_t(0.1), "model")}, step=4, epoch=1, networks={"model": net})
    # Checked on the device at step 4, read at step 6: the step of the check, and when the values were counted.
    run = Run(every_steps=4)
    for step in range(1, 7):
        run.step({"loss": loss_metric(_t(0.1), "model")}, step=step, networks={"model": net})
    with pytest.raises(NonFiniteError, match=r"'1.running_var' \(1 NaN and 0 Inf among its 4 values, counted at "
                                             r"step 6\) at step 4 \(epoch 1\)"):
        run.boundary(epoch=1, networks={"model": net})


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
    """Wrap the method's device_step so that `tamper(method, metrics)` runs after step `at_step`."""
    real_open = training.open_session

    def open_session(cfg):
        session = real_open(cfg)
        method, step = session.method, session.method.device_step

        def device_step(x, y, index=None):
            metrics = step(x, y, index)
            if method.global_step == at_step:
                tamper(method, metrics)
            return metrics

        method.device_step = device_step
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


def test_skipped_steps_do_not_stop_training_and_are_logged(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="generalist_trainer")  # the guard logs its notes; the CLI prints them
    def scaler_skipped(method, metrics):
        metrics.update(robust_loss=loss_metric(_t(math.inf), "robust"), skipped_steps=skipped_metric(_t(1)))

    _tamper_after_step(monkeypatch, 2, scaler_skipped)
    result = training.train(tiny_config(tmp_path, *IN_PROCESS))
    assert result.finished and result.global_step == STEPS
    assert "step 2 (epoch 1): the loss scaler skipped 1 optimiser step(s)" in caplog.text
    rows = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r.get("skipped_steps")] == [2]


def test_cli_exits_2_with_the_guard_message(tmp_path, monkeypatch, capsys):
    _tamper_after_step(monkeypatch, 2, lambda method, metrics: metrics.update(
        natural_loss=loss_metric(_t(math.nan), "natural")))
    cfg_args = [f"train.out_dir={tmp_path}", *IN_PROCESS]
    from tests.reliability.runs import TINY
    assert main(["train", "--no-eval", *TINY, *cfg_args]) == 2
    assert "error: non-finite natural_loss = nan at step 2 (epoch 1) in network 'natural'" in capsys.readouterr().err


def test_fp16_training_with_a_real_loss_scaler_counts_its_skipped_steps_and_finishes(tmp_path, monkeypatch, caplog):
    """engine.precision=fp16 on the CPU: torch.amp.GradScaler("cpu") is the scaler CUDA runs use. Started at a
    scale of 2^24, the first scaled gradients overflow fp16, so the scaler skips steps (halving its scale)
    until they fit: counted, printed and logged, and the run goes on to the end with finite weights."""
    from generalist_trainer.trainer.engine import precision

    caplog.set_level(logging.INFO, logger="generalist_trainer")  # the guard logs its notes; the CLI prints them
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
    out = caplog.text
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
