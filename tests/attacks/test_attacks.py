"""The attack contract: ball and box, loss increase, mode and BatchNorm untouched, input-only
gradients, reproducible randomness, degenerate eps and steps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from generalist_trainer.trainer.attacks import PGD, Attack, CWLinf, TradesKL, build_train_attack, eval_mode
from generalist_trainer.trainer.attacks.cw import cw_margin
from generalist_trainer.trainer.config import AttackConfig

EPS_INF = 0.1
EPS_L2 = 1.0
STEPS = 10


def attacks(generator: torch.Generator | None = None, steps: int = STEPS) -> dict[str, Attack]:
    inf, l2 = 2.5 * EPS_INF / steps, 2.5 * EPS_L2 / steps
    return {
        "pgd_linf": PGD(EPS_INF, inf, steps, generator=generator),
        "pgd_l2": PGD(EPS_L2, l2, steps, norm="l2", generator=generator),
        "cw": CWLinf(EPS_INF, inf, steps, generator=generator),
        "trades": TradesKL(EPS_INF, inf, steps, generator=generator),
    }


NAMES = list(attacks())


def in_ball_and_box(name: str, x: torch.Tensor, x_adv: torch.Tensor) -> None:
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    delta = (x_adv - x).flatten(1)
    if name == "pgd_l2":
        assert (delta.norm(dim=1) <= EPS_L2 * (1 + 1e-5) + 1e-6).all(), delta.norm(dim=1).max()
    else:
        assert delta.abs().max() <= EPS_INF + 1e-6, delta.abs().max()


@pytest.mark.parametrize("name", NAMES)
def test_inside_ball_and_box_including_saturated_pixels(name, model, batch):
    x, y = batch
    x = x.clone()
    x[:8] = 0.0  # whole images at the box edges: the projection and the clamp must both hold
    x[8:16] = 1.0
    x[16:, :, :4] = 0.0
    x[16:, :, -4:] = 1.0
    x_adv = attacks(torch.Generator().manual_seed(0))[name](model, x, y)
    in_ball_and_box(name, x, x_adv)
    assert not torch.equal(x_adv, x)


def test_random_starts_inside_ball_and_box(model, batch):
    x, y = batch
    for norm, eps in (("linf", EPS_INF), ("l2", EPS_L2)):
        x_adv = PGD(eps, 0.0, 0, norm=norm, generator=torch.Generator().manual_seed(0))(model, x, y)
        in_ball_and_box("pgd_l2" if norm == "l2" else "pgd_linf", x, x_adv)
        assert not torch.equal(x_adv, x)
    assert torch.equal(PGD(EPS_INF, 0.01, 0, random_start=False)(model, x, y), x)


def test_losses_increase_on_a_trained_model(model, batch):
    x, y = batch
    gen = torch.Generator().manual_seed(0)
    a = attacks(gen)
    with torch.no_grad():
        clean = model(x)
        p_clean = F.softmax(clean, dim=1)
        ce_clean = F.cross_entropy(clean, y).item()
        for name in ("pgd_linf", "pgd_l2"):
            ce_adv = F.cross_entropy(model(a[name](model, x, y)), y).item()
            assert ce_adv > ce_clean + 0.1, (name, ce_clean, ce_adv)
        margin_adv = cw_margin(model(a["cw"](model, x, y)), y).mean().item()
        assert margin_adv > cw_margin(clean, y).mean().item() + 0.5
        # TRADES: KL(p(x) || p(x_adv)) grows from ~0 (its start is x + 0.001 N(0, I)).
        start = TradesKL(EPS_INF, 0.01, 0, generator=torch.Generator().manual_seed(0))(model, x, y)
        kl_start = F.kl_div(F.log_softmax(model(start), 1), p_clean, reduction="sum").item()
        kl_adv = F.kl_div(F.log_softmax(model(a["trades"](model, x, y)), 1), p_clean, reduction="sum").item()
        assert kl_adv > kl_start + 0.1, (kl_start, kl_adv)


def _flags(model: torch.nn.Module) -> dict[str, bool]:
    return {name: m.training for name, m in model.named_modules()}


def _buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: b.clone() for name, b in model.named_buffers()}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("mode", ["train", "eval", "mixed"])
def test_model_mode_buffers_and_grads_untouched(name, mode, model, batch):
    x, y = batch
    model.train(mode != "eval")
    if mode == "mixed":
        model.features[0][1].eval()  # a frozen BatchNorm inside a training model
        model.classifier.eval()
    flags, buffers = _flags(model), _buffers(model)
    assert any("num_batches_tracked" in k for k in buffers)
    seen: list[bool] = []
    hook = model.register_forward_pre_hook(lambda m, args: seen.append(any(s.training for s in m.modules())))
    x_before = x.clone()
    x_adv = attacks(steps=2)[name](model, x, y)
    hook.remove()
    assert seen and not any(seen)  # every forward inside the attack ran fully in eval mode
    assert _flags(model) == flags
    after = _buffers(model)
    assert all(torch.equal(after[k], buffers[k]) for k in buffers)
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(x, x_before)
    assert not x_adv.requires_grad and x_adv.grad_fn is None


def test_eval_mode_restores_on_error(model):
    model.train()
    model.features[0][1].eval()
    flags = _flags(model)
    with pytest.raises(RuntimeError):
        with eval_mode(model):
            assert not any(m.training for m in model.modules())
            raise RuntimeError("boom")
    assert _flags(model) == flags


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_result(name, model, batch):
    x, y = batch
    first = attacks(torch.Generator().manual_seed(7), steps=3)[name](model, x, y)
    again = attacks(torch.Generator().manual_seed(7), steps=3)[name](model, x, y)
    other = attacks(torch.Generator().manual_seed(8), steps=3)[name](model, x, y)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    # Without a generator the global RNG decides, so torch.manual_seed (checkpointed) reproduces it.
    torch.manual_seed(3)
    g1 = attacks(steps=3)[name](model, x, y)
    torch.manual_seed(3)
    assert torch.equal(attacks(steps=3)[name](model, x, y), g1)


@pytest.mark.parametrize("name", NAMES)
def test_zero_eps_returns_x(name, model, batch):
    x, y = batch
    a = attacks(torch.Generator().manual_seed(0))[name]
    a.eps = 0.0
    assert torch.equal(a(model, x, y), x)


def test_works_under_no_grad_and_bf16_autocast(model, batch):
    x, y = batch
    attack = PGD(EPS_INF, 2.5 * EPS_INF / STEPS, STEPS, random_start=False)
    with torch.no_grad():
        x_adv = attack(model, x, y)
    assert torch.equal(attack(model, x, y), x_adv)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_bf16 = attack(model, x, y)
    assert x_bf16.dtype == x.dtype
    assert (x_bf16 - x).abs().amax(dim=(1, 2, 3)).min() > 0  # no zeroed input gradient


def test_rejects_inputs_outside_unit_box(model, batch):
    x, y = batch
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        PGD(EPS_INF, 0.01, 1)(model, x * 2, y)


def test_build_train_attack_follows_config():
    a = build_train_attack(AttackConfig(norm="l2", eps=0.5, step=0.1, steps=7, random_start=False))
    assert isinstance(a, PGD)
    assert (a.norm, a.eps, a.step, a.steps, a.random_start) == ("l2", 0.5, 0.1, 7, False)
    assert a.generator is None


@pytest.mark.parametrize("name", NAMES)
def test_channels_last_input(name, model, batch):
    x, y = batch
    x_cl = x[:8].contiguous(memory_format=torch.channels_last)
    x_adv = attacks(torch.Generator().manual_seed(0), steps=2)[name](model, x_cl, y[:8])
    in_ball_and_box(name, x_cl, x_adv)
    assert torch.equal(x_cl, x[:8])
