"""The local Lipschitz estimator: closed form on linear models, the released code's variant step for step,
and the evaluation contract (model mode, BatchNorm buffers, global RNG, parameter gradients untouched)."""

import pytest
import torch
from torch import nn

from generalist_trainer.trainer.analysis.lipschitz import LipschitzConfig, lipschitz_ratio, local_lipschitz
from generalist_trainer.trainer.config import ModelConfig
from generalist_trainer.trainer.errors import ConfigError
from generalist_trainer.trainer.models import build_model

SHAPE = (1, 6, 8)  # 48 pixels


class Linear(nn.Module):
    """f(x) = W x + b on the flattened image."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.fc = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.fc.weight.copy_(weight)

    def forward(self, x):
        return self.fc(x.flatten(1))


def disjoint_rows(num_rows: int, seed: int) -> torch.Tensor:
    """W (K, 48) whose rows have disjoint supports; then max ||W d||_1 / ||d||_inf = sum |W_ij|."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.zeros(num_rows, 48)
    width = 48 // num_rows
    for k in range(num_rows):
        weight[k, k * width:(k + 1) * width] = torch.randn(width, generator=g)
    return weight


def interior_points(n: int, seed: int = 1) -> torch.Tensor:
    """Points in [0.3, 0.7]: the ball of radius <= 0.1 stays inside [0, 1], so only the ball constrains x'."""
    g = torch.Generator().manual_seed(seed)
    return 0.3 + 0.4 * torch.rand(n, *SHAPE, generator=g)


@pytest.mark.parametrize("weight", [disjoint_rows(1, 0), disjoint_rows(4, 1),
                                    torch.cat([w := disjoint_rows(1, 2), -w])],
                         ids=["one_logit", "disjoint_rows", "w_and_minus_w"])
@pytest.mark.parametrize("eps", [0.1, 0.031])
def test_ascent_on_a_linear_model_approaches_the_closed_form_from_below(weight, eps):
    # For disjoint row supports, sum_k |w_k . d| <= sum_k ||w_k||_1 ||d||_inf, with equality at
    # d = t sign(W) (every coordinate at the same magnitude): the local constant is sum |W_ij| everywhere.
    # Rows w and -w: 2 |w . d| <= 2 ||w||_1 ||d||_inf, equality at d = t sign(w), again sum |W_ij|.
    closed_form = float(weight.abs().sum())
    model = Linear(weight)
    x = interior_points(40)
    estimate = local_lipschitz(model, x, LipschitzConfig(eps=eps))
    assert estimate.per_point.shape == (40,)
    # Every candidate x' is feasible, so no estimate can exceed the true constant ...
    assert float(estimate.per_point.max()) <= closed_form * (1 + 1e-5)
    # ... and 10 signed steps of 0.003 from a 0.001-noise start get within 10% of it at every point.
    assert float(estimate.per_point.min()) >= 0.9 * closed_form
    assert estimate.mean == pytest.approx(float(estimate.per_point.double().mean()))


def test_ratio_at_the_known_maximiser_is_the_closed_form():
    weight = disjoint_rows(4, 3)
    model = Linear(weight)
    x = interior_points(3)
    xp = x + 0.05 * torch.sign(weight).sum(0).view(1, *SHAPE)  # d = eps * sign(W), all |d_j| equal
    ratio = lipschitz_ratio(model(x), model(xp), x, xp)
    torch.testing.assert_close(ratio, torch.full((3,), float(weight.abs().sum())), rtol=1e-5, atol=0)


def test_released_variant_steps_down_and_reports_far_less_than_the_ascent():
    model = Linear(disjoint_rows(4, 4))
    x = interior_points(20)
    ascent = local_lipschitz(model, x, LipschitzConfig(eps=0.1))
    released = local_lipschitz(model, x, LipschitzConfig(eps=0.1, variant="authors_descent"))
    # Descending a linear model's ratio from a 0.001 start drives |W d| towards 0.
    assert released.mean < 0.2 * ascent.mean
    assert bool((released.per_point < ascent.per_point).all())


class Wavy(nn.Module):
    """Two oscillating logits of the mean pixel: the ratio along the ascent path is not monotone."""

    def forward(self, x):
        m = x.flatten(1).mean(1, keepdim=True)
        return 5 * torch.cat([torch.sin(40 * m), torch.cos(25 * m)], 1)


def ascent_path_ratios(model, x, eps, seed, step=0.003, steps=10, init_std=0.001):
    """The ratio at the start and after each of the steps of the ascent (the definition, spec section 2),
    written out independently: (N, steps + 1)."""
    generator = torch.Generator().manual_seed(seed)

    def project(xp):
        return (x + (xp - x).clamp(-eps, eps)).clamp(0, 1)

    logits_x = model(x).detach()
    xp = project(x + init_std * torch.randn(x.shape, generator=generator))
    ratios = []
    for _ in range(steps):
        xp = xp.detach().requires_grad_(True)
        ratio = lipschitz_ratio(logits_x, model(xp), x, xp)
        (grad,) = torch.autograd.grad(ratio.sum(), xp)
        ratios.append(ratio.detach())
        xp = project(xp.detach() + step * grad.sign())
    ratios.append(lipschitz_ratio(logits_x, model(xp), x, xp).detach())
    return torch.stack(ratios, 1)


def test_ascent_keeps_the_best_iterate_not_the_last():
    x = interior_points(40)
    path = ascent_path_ratios(Wavy(), x, eps=0.1, seed=0)
    best, last = path.max(1).values, path[:, -1]
    assert int((last < 0.95 * best).sum()) >= 5  # the model really makes the last iterate worse than the best
    estimate = local_lipschitz(Wavy(), x, LipschitzConfig(eps=0.1, seed=0, batch_size=40))
    torch.testing.assert_close(estimate.per_point, best, rtol=1e-5, atol=0)


def released_code_estimate(model, X, eps, seed, batch_size=16, step=0.003, steps=10):
    """A literal transcription of estimate_local_lip_v2 (yangarbiter/robust-local-lipschitz, lolip/utils.py),
    top_norm=1, btm_norm=inf, with its torch.randn start drawn from a seeded generator."""
    def local_lip(x, xp, reduction="mean"):
        down = torch.flatten(x - xp, start_dim=1)
        top = torch.flatten(model(x), start_dim=1) - torch.flatten(model(xp), start_dim=1)
        ret = torch.norm(top, dim=1, p=1) / torch.norm(down + 1e-6, dim=1, p=float("inf"))
        return torch.mean(ret) if reduction == "mean" else torch.sum(ret)

    model.eval()
    generator = torch.Generator().manual_seed(seed)
    total = 0.0
    for i in range(0, len(X), batch_size):
        x = X[i:i + batch_size]
        x_adv = x + 0.001 * torch.randn(x.shape, generator=generator)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            with torch.enable_grad():
                loss = (-1) * local_lip(x, x_adv)
            loss.backward()
            eta = step * x_adv.grad.data.sign().detach()
            x_adv = x_adv.data.detach() + eta.detach()
            eta = torch.clamp(x_adv.data - x.data, -eps, eps)
            x_adv = x.data.detach() + eta.detach()
            x_adv = torch.clamp(x_adv, 0, 1.0)
        with torch.no_grad():
            total += local_lip(x, x_adv, reduction="sum").item()
    return total / len(X)


def test_authors_variant_matches_the_released_code():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 5))
    g = torch.Generator().manual_seed(5)
    x = torch.rand(37, *SHAPE, generator=g)  # 3 batches of 16, the last one partial; points near 0 and 1
    ours = local_lipschitz(model, x, LipschitzConfig(eps=0.1, variant="authors_descent", seed=7))
    reference = released_code_estimate(model, x, eps=0.1, seed=7)
    assert ours.mean == pytest.approx(reference, rel=1e-5)


def test_evaluation_contract_mode_buffers_rng_and_gradients_untouched():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="small_cnn", dropout=0.3), num_classes=4, in_channels=1, image_size=8,
                        mean=(0.5,), std=(0.25,))
    model.train()
    model.features[0][1].eval()  # one BatchNorm frozen: its own flag must survive too
    flags = {name: m.training for name, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    x = torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    first = local_lipschitz(model, x, LipschitzConfig(eps=0.1, batch_size=4))
    assert {name: m.training for name, m in model.named_modules()} == flags
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in model.parameters())
    # In eval mode the forward is deterministic, so the same seed gives the same numbers.
    again = local_lipschitz(model, x, LipschitzConfig(eps=0.1, batch_size=4))
    assert torch.equal(first.per_point, again.per_point)
    assert torch.isfinite(first.per_point).all() and bool((first.per_point > 0).all())


@pytest.mark.parametrize("kwargs, field", [({"eps": 0.0}, "eps"), ({"eps": 0.1, "variant": "descent"}, "variant"),
                                           ({"eps": 0.1, "steps": -1}, "steps"),
                                           ({"eps": 0.1, "batch_size": 0}, "batch_size")])
def test_bad_settings_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        LipschitzConfig(**kwargs)


def test_inputs_outside_the_unit_box_are_rejected():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        local_lipschitz(Linear(disjoint_rows(1, 0)), torch.full((2, *SHAPE), 1.5), LipschitzConfig(eps=0.1))
