"""Precision: autocast contexts, the fp16 loss scaler's skipped steps (counted, not failed on), the scaler's
state in checkpoints, fp32 attack gradients, and the attack's zero-gradient diagnostic."""

import logging

import pytest
import torch
from torch import nn

from generalist_trainer.trainer.attacks import PGD
from generalist_trainer.trainer.engine.precision import LossScaler, Precision, autocast
from generalist_trainer.trainer.engine.step_metrics import StepAccumulator, host_values
from generalist_trainer.trainer.guards import FiniteGuard

from .helpers import tiny_batch, tiny_method


def test_autocast_contexts():
    cpu = torch.device("cpu")
    with autocast("fp32", cpu):
        assert not torch.is_autocast_enabled("cpu")
    with autocast("bf16", cpu):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    p = Precision("bf16", "fp32", cpu)
    with p.eval_autocast():  # evaluation stays fp32 unless asked otherwise
        assert not torch.is_autocast_enabled("cpu")
    with Precision("fp32", "bf16", cpu).eval_autocast():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")


def _linear_and_optimizer():
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def test_loss_scaler_skips_an_overflowing_step_reports_it_and_halves_the_scale():
    model, opt = _linear_and_optimizer()
    scaler = LossScaler(torch.device("cpu"), enabled=True)
    x = torch.rand(8, 4)
    before = [p.detach().clone() for p in model.parameters()]
    # 1e35 x the 2**16 initial scale overflows fp32: the scaled gradients are inf, the step must be skipped.
    assert scaler.update(model(x).sum() * 1e35, opt) == 1
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert scaler.scaler.get_scale() == 2.0**15
    assert scaler.update(model(x).sum(), opt) == 0
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert scaler.state_dict()["scale"] == 2.0**15


def test_disabled_loss_scaler_is_plain_backward_and_step():
    model_a, opt_a = _linear_and_optimizer()
    model_b, opt_b = _linear_and_optimizer()
    x = torch.rand(8, 4)
    assert LossScaler(torch.device("cpu"), enabled=False).update(model_a(x).pow(2).sum(), opt_a) == 0
    opt_b.zero_grad()
    model_b(x).pow(2).sum().backward()
    opt_b.step()
    assert all(torch.equal(a, b) for a, b in zip(model_a.parameters(), model_b.parameters()))
    assert LossScaler(torch.device("cpu"), enabled=False).state_dict() == {}


def test_generalist_fp16_overflow_skips_only_that_expert_and_the_guard_counts_it(caplog):
    caplog.set_level(logging.INFO, logger="generalist_trainer")
    m = tiny_method("engine.precision=fp16")
    m.start_epoch(1)
    # A scale no fp16 gradient survives: the robust expert's step overflows and is skipped.
    m.robust_scaler.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**120)
    robust = [p.detach().clone() for p in m.robust.parameters()]
    natural = [p.detach().clone() for p in m.natural.parameters()]
    metrics = m.device_step(*tiny_batch())
    assert host_values(metrics)["skipped_steps"] == 1
    assert all(torch.equal(a, b) for a, b in zip(robust, m.robust.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(natural, m.natural.parameters()))
    steps, guard = StepAccumulator(torch.device("cpu")), FiniteGuard(every_steps=1)
    steps.add(metrics, 1)
    guard.after_step(steps, step=1, networks=m.networks())
    guard.check(steps.read(), epoch=1, networks=m.networks())  # the robust loss is non-finite: excused, counted
    assert guard.skipped_steps == 1 and "skipped 1 optimiser step" in caplog.text
    # The scales are training state: they go into the checkpoint and come back on resume.
    state = m.extra_state()
    assert state["loss_scalers"]["robust"]["scale"] == 2.0**119
    fresh = tiny_method("engine.precision=fp16")
    fresh.load_extra_state(state)
    assert fresh.robust_scaler.scaler.get_scale() == 2.0**119 and fresh.global_step == 1


def test_no_loss_scaler_state_or_skipped_metric_without_fp16():
    m = tiny_method(method="pgd_at")
    m.start_epoch(1)
    metrics = m.train_step(*tiny_batch())
    assert "skipped_steps" not in metrics and "loss_scalers" not in m.extra_state()
    assert 0.0 <= metrics["attack_zero_grad_fraction"] <= 1.0


def test_attack_gradient_is_fp32_under_bf16_autocast():
    m = tiny_method(method="pgd_at")
    x, y = tiny_batch()
    with autocast("bf16", torch.device("cpu")):
        grad = PGD.input_grad(m.model, x, lambda logits: nn.functional.cross_entropy(logits, y, reduction="sum"))
    assert grad.dtype == torch.float32 and grad.shape == x.shape and bool(grad.abs().sum() > 0)


class LeftHalfOnly(nn.Module):
    """Logits from the left half of the image only: the right half's input gradient is exactly zero."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(1 * 12 * 6, 4)

    def forward(self, x):
        return self.head(x[..., :6].flatten(1))


@pytest.mark.parametrize("every_step", [False, True])
def test_zero_gradient_fraction_counts_exact_zeros(every_step):
    torch.manual_seed(0)
    attack = PGD(0.1, 0.05, 3, zero_grad_every_step=every_step)
    assert attack.zero_grad_fraction is None
    x, y = tiny_batch()
    attack(LeftHalfOnly(), x, y)
    assert attack.zero_grad_fraction.dtype == torch.float32
    assert float(attack.zero_grad_fraction) == pytest.approx(0.5)


@pytest.mark.parametrize("every_step, expected", [(False, 0.0), (True, 0.5)])
def test_zero_gradient_fraction_of_the_last_step_or_the_mean_over_steps(monkeypatch, every_step, expected):
    attack = PGD(0.1, 0.05, 2, zero_grad_every_step=every_step)
    grads = iter([torch.zeros(8, 1, 12, 12), torch.ones(8, 1, 12, 12)])  # step 1 all zero, step 2 none
    monkeypatch.setattr(attack, "input_grad", lambda model, x_adv, loss_fn: next(grads))
    x, y = tiny_batch()
    attack(LeftHalfOnly(), x, y)
    assert float(attack.zero_grad_fraction) == pytest.approx(expected)


def test_zero_radius_attack_reports_no_fraction():
    attack = PGD(0.0, 0.05, 2)
    attack(LeftHalfOnly(), *tiny_batch())
    assert attack.zero_grad_fraction is None
