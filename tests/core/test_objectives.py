"""Robust objectives as parts (issue 14): one step of every registered objective, alone and as Generalist's robust
expert; MART and FAT against direct formulas (IAT: tests/core/test_iat.py); the registries as the only name lists."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from generalist_trainer.trainer.attacks import EarlyStopPGD
from generalist_trainer.trainer.errors import ConfigError
from generalist_trainer.trainer.methods import build_method
from generalist_trainer.trainer.objectives.mart import MART
from generalist_trainer.trainer.registry import MODELS, OBJECTIVES, load_registrations
from tests.engine.helpers import tiny_batch, tiny_config, tiny_method

load_registrations()
OBJECTIVE_NAMES = OBJECTIVES.names()


def test_the_seed_baselines_are_registered():
    assert {"pgd_at", "trades", "rst", "mart", "fat", "iat"} <= set(OBJECTIVE_NAMES)


@pytest.mark.parametrize("objective", OBJECTIVE_NAMES)
@pytest.mark.parametrize("single_network", [True, False], ids=["single", "generalist"])
def test_one_step_of_each_objective(objective, single_network):
    if single_network:
        method = tiny_method(method=objective)
        trained = ["model"]
    else:
        method = tiny_method(f"method.generalist.robust_objective={objective}", method="generalist")
        trained = ["robust", "natural", "global"]
    assert method.name == (objective if single_network else "generalist")
    method.start_epoch(1)
    before = {k: [p.detach().clone() for p in method.networks()[k].parameters()] for k in trained}
    index = None
    if method.needs_sample_index:  # IAT keeps per-sample state: the batch's dataset indices
        method.set_training_size(8)
        index = torch.arange(8)
    metrics = method.train_step(*tiny_batch(), index)
    assert metrics and all(math.isfinite(v) for v in metrics.values())
    for key in trained:
        after = list(method.networks()[key].parameters())
        assert any(not torch.equal(a, b) for a, b in zip(after, before[key])), key


# ---------------------------------------------------------------------------------------------
# MART against its formula, written out per sample in float64


def _linear(k: int = 4, d: int = 6) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, k))


def direct_mart(z_nat: torch.Tensor, z_adv: torch.Tensor, y: torch.Tensor, beta: float) -> torch.Tensor:
    total = torch.zeros((), dtype=torch.float64)
    n, k = z_nat.shape
    for i in range(n):
        p_adv = [math.exp(v) for v in z_adv[i].tolist()]
        p_adv = [v / sum(p_adv) for v in p_adv]
        p_nat = [math.exp(v) for v in z_nat[i].tolist()]
        p_nat = [v / sum(p_nat) for v in p_nat]
        yi = int(y[i])
        ce = -math.log(p_adv[yi])
        margin = -math.log(1 - max(p_adv[j] for j in range(k) if j != yi))
        kl = sum(p_nat[j] * math.log(p_nat[j] / p_adv[j]) for j in range(k))
        total += ce + margin + beta * kl * (1 - p_nat[yi])
    return total / n


def test_mart_loss_equals_the_direct_formula():
    net = _linear()
    gen = torch.Generator().manual_seed(1)
    x, x_adv = torch.rand(7, 6, generator=gen), torch.rand(7, 6, generator=gen)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2])
    loss, metrics = MART(None, beta=2.5).loss(net, x, x_adv, y)
    with torch.no_grad():
        expected = direct_mart(net(x).double(), net(x_adv).double(), y, 2.5)
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)
    assert set(metrics) == {"acc", "adv_acc", "boosted_ce", "weighted_kl"}


def test_mart_margin_takes_the_runner_up_when_the_top_class_is_y():
    z_nat = torch.tensor([[5.0, 1.0, 0.0]])
    z_adv = torch.tensor([[3.0, 2.0, -1.0]])  # top class is y = 0: the margin uses class 1
    loss, _ = MART(None, beta=0.0).loss(nn.Identity(), z_nat, z_adv, torch.tensor([0]))
    p = torch.softmax(z_adv.double(), 1)[0]
    assert float(loss) == pytest.approx(float(-torch.log(p[0]) - torch.log(1 - p[1])), rel=1e-6)


# ---------------------------------------------------------------------------------------------
# FAT's early-stopped PGD against a per-sample loop


def direct_early_stop(net, x, y, eps, step, steps, tau):
    """Each sample alone: before each step, if misclassified, stop when no budget is left, else spend one."""
    out = []
    for i in range(x.shape[0]):
        x0, xi, budget = x[i:i + 1], x[i:i + 1].clone(), tau
        for _ in range(steps):
            leaf = xi.clone().requires_grad_(True)
            logits = net(leaf)
            if int(logits.argmax(1)) != int(y[i]):
                if budget == 0:
                    break
                budget -= 1
            (g,) = torch.autograd.grad(nn.functional.cross_entropy(logits, y[i:i + 1]), leaf)
            xi = torch.min(torch.max(xi + step * g.sign(), x0 - eps), x0 + eps).clamp(0, 1).detach()
        out.append(xi)
    return torch.cat(out)


@pytest.mark.parametrize("tau", [0, 1, 3])
def test_fat_attack_stops_each_sample_tau_steps_past_the_boundary(tau):
    net = _linear()
    gen = torch.Generator().manual_seed(2)
    x, y = torch.rand(16, 6, generator=gen), torch.randint(0, 4, (16,), generator=gen)
    attack = EarlyStopPGD(0.3, 0.05, 10, tau=tau, random_start=False)
    x_adv = attack(net, x, y)
    torch.testing.assert_close(x_adv, direct_early_stop(net, x, y, 0.3, 0.05, 10, tau), rtol=0, atol=1e-6)
    # Samples stopped after different numbers of steps, some before the last: the case the test is about.
    taken = attack.steps_taken
    assert int(taken.min()) < int(taken.max()) and int(taken.min()) < 10


def test_fat_with_a_large_tau_is_pgd():
    from generalist_trainer.trainer.attacks import PGD

    net = _linear()
    gen = torch.Generator().manual_seed(3)
    x, y = torch.rand(16, 6, generator=gen), torch.randint(0, 4, (16,), generator=gen)
    early = EarlyStopPGD(0.3, 0.05, 10, tau=10, random_start=False)(net, x, y)
    torch.testing.assert_close(early, PGD(0.3, 0.05, 10, random_start=False)(net, x, y), rtol=0, atol=0)


def test_fat_tau_follows_the_authors_dynamic_schedule():
    from generalist_trainer.trainer.objectives.fat import scheduled_tau

    # FAT.py (zjfheart/Friendly-Adversarial-Training): epoch <= 50 -> 0, <= 90 -> 1, else 2, of 120 epochs.
    assert [scheduled_tau(e, 120, 0, True) for e in (1, 50, 51, 90, 91, 120)] == [0, 0, 1, 1, 2, 2]
    assert [scheduled_tau(e, 3, 0, True) for e in (1, 2, 3)] == [0, 1, 2]
    assert [scheduled_tau(e, 120, 3, False) for e in (1, 60, 120)] == [3, 3, 3]
    method = tiny_method(method="fat")  # defaults: tau 0, dynamic, over the 8 epochs of the tiny config
    taus = [method.start_epoch(e)["fat_tau"] for e in range(1, 9)]
    assert taus == [0, 0, 0, 1, 1, 1, 2, 2] and method.objective.attack.tau == 2  # past 8 * 50/120, 8 * 90/120
    fixed = tiny_method("method.fat.tau=3", "method.fat.dynamic_tau=false", method="fat")
    assert {fixed.start_epoch(e)["fat_tau"] for e in range(1, 9)} == {3}


@pytest.mark.parametrize("override, field_name", [("method.mart.beta=-1", "method.mart.beta"),
                                                  ("method.fat.tau=-2", "method.fat.tau"),
                                                  ("method.fat.dynamic_tau=maybe", "method.fat.dynamic_tau")])
def test_bad_objective_settings_name_their_field(override, field_name):
    with pytest.raises(ConfigError, match=field_name.replace(".", r"\.")):
        tiny_config(override)


# ---------------------------------------------------------------------------------------------
# Registries


class TwoLayer(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, image_size: int):
        super().__init__()
        self.num_classes = num_classes
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, 16), nn.ReLU(),
                                 nn.Linear(16, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.fixture
def registered_model():
    @MODELS.register("test_two_layer")
    def two_layer(cfg, *, num_classes, in_channels, image_size, mean, std):
        return TwoLayer(num_classes, in_channels, image_size)

    yield "test_two_layer"
    MODELS.unregister("test_two_layer")


def test_a_model_registered_in_a_test_file_is_accepted_and_trains(registered_model):
    from generalist_trainer.trainer.models import build_model

    with pytest.raises(ConfigError, match="model.arch"):
        tiny_config("model.arch=test_two_layer_unregistered")
    cfg = tiny_config(f"model.arch={registered_model}", method="pgd_at")

    def factory():
        return build_model(cfg.model, num_classes=4, in_channels=1, image_size=12, mean=(0.5,), std=(0.25,))

    method = build_method(cfg, factory, torch.device("cpu"))
    assert isinstance(method.model, TwoLayer)
    method.start_epoch(1)
    before = [p.detach().clone() for p in method.model.parameters()]
    assert math.isfinite(method.train_step(*tiny_batch())["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(method.model.parameters(), before))


def test_config_names_come_from_the_registries():
    with pytest.raises(ConfigError, match=r"method\.name.*'mart'"):
        tiny_config(method="no_such_method")
    with pytest.raises(ConfigError, match=r"method\.ducat\.enabled"):
        tiny_config("method.ducat.enabled=true", method="mart")  # MART is not flagged supports_ducat
    with pytest.raises(ConfigError, match=r"method\.generalist\.robust_objective"):
        tiny_config("method.generalist.robust_objective=natural")
