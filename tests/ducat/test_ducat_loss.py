"""DUCAT's two-hot targets, soft-target loss and activation schedule against direct formulas."""

import math

import pytest
import torch
from torch import nn

from generalist_trainer.trainer.config import DucatConfig
from generalist_trainer.trainer.objectives.ducat import (
    Ducat,
    DucatNatural,
    first_active_epoch,
    is_active,
    soft_cross_entropy,
    two_hot_targets,
)
from generalist_trainer.trainer.objectives.pgd_at import PGDAT
from generalist_trainer.trainer.objectives.trades import TRADES

C = 3


def active_ducat(cfg: DucatConfig, inner=None) -> Ducat:
    """DUCAT around `inner` (PGD-AT by default; no attack needed: the losses get x_adv), active, C classes."""
    ducat = Ducat(inner if inner is not None else PGDAT(None), cfg)
    ducat.num_classes = C
    ducat.active = True
    return ducat


def direct_soft_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-(1/N) sum_i sum_k t_ik log(e^{z_ik} / sum_j e^{z_ij}), in float64, written out."""
    z = logits.double()
    log_p = z - torch.log(torch.exp(z).sum(1, keepdim=True))
    return -(targets.double() * log_p).sum() / z.shape[0]


def test_two_hot_targets_put_the_weights_on_y_and_its_dummy():
    y = torch.tensor([0, 2, 1])
    t = two_hot_targets(y, C, 0.75, 0.25)
    expected = torch.zeros(3, 2 * C)
    for i, label in enumerate(y.tolist()):
        expected[i, label] = 0.75
        expected[i, label + C] = 0.25
    assert torch.equal(t, expected)
    assert t.dtype == torch.float32


@pytest.mark.parametrize("weights", [(0.75, 0.25), (0.0, 1.0), (0.6, 0.6)])
def test_soft_cross_entropy_equals_the_direct_formula(weights):
    gen = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(7, 2 * C, generator=gen)
    y = torch.randint(0, C, (7,), generator=gen)
    targets = two_hot_targets(y, C, *weights)
    torch.testing.assert_close(soft_cross_entropy(logits, targets).double(), direct_soft_ce(logits, targets))


def test_soft_cross_entropy_of_a_one_hot_target_is_the_hard_cross_entropy():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 2 * C, generator=gen)
    y = torch.randint(0, 2 * C, (5,), generator=gen)
    one_hot = nn.functional.one_hot(y, 2 * C).float()
    torch.testing.assert_close(soft_cross_entropy(logits, one_hot), nn.functional.cross_entropy(logits, y))


def _tiny_network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 2 * C))


@pytest.mark.parametrize("adv_weight", [1.0, 0.5])
def test_pgd_at_loss_is_the_joint_two_hot_cross_entropy(adv_weight):
    net = _tiny_network()
    objective = active_ducat(DucatConfig(enabled=True, adv_dummy_weight=adv_weight))
    gen = torch.Generator().manual_seed(2)
    x, x_adv = torch.rand(6, 4, generator=gen), torch.rand(6, 4, generator=gen)
    y = torch.randint(0, C, (6,), generator=gen)
    loss, metrics = objective.loss(net, x, x_adv, y)

    z_clean, z_adv = net(x).double(), net(x_adv).double()
    log_p_clean, log_p_adv = z_clean.log_softmax(1), z_adv.log_softmax(1)
    rows = torch.arange(6)
    per_clean = -(0.75 * log_p_clean[rows, y] + 0.25 * log_p_clean[rows, y + C])
    per_adv = -adv_weight * log_p_adv[rows, y + C]
    expected = (per_clean.sum() + per_adv.sum()) / 12  # averaged over the 2N rows of [x; x_adv]
    torch.testing.assert_close(loss.double(), expected)
    assert set(metrics) == {"acc", "adv_acc", "adv_dummy"}
    # 0-dim device tensors: reading them would sync the host with the device inside every step.
    assert all(isinstance(m.value, torch.Tensor) and m.value.dim() == 0 for m in metrics.values())
    assert 0.0 <= float(metrics["adv_dummy"].value) <= 1.0


def test_trades_loss_adds_beta_kl_over_the_2c_classes():
    net = _tiny_network()
    objective = active_ducat(DucatConfig(enabled=True), TRADES(None, beta=6.0))
    gen = torch.Generator().manual_seed(3)
    x, x_adv = torch.rand(5, 4, generator=gen), torch.rand(5, 4, generator=gen)
    y = torch.randint(0, C, (5,), generator=gen)
    loss, metrics = objective.loss(net, x, x_adv, y)

    z = net(torch.cat([x, x_adv])).double()
    targets = torch.cat([two_hot_targets(y, C, 0.75, 0.25), two_hot_targets(y, C, 0.0, 1.0)])
    p_clean, p_adv = z[:5].softmax(1), z[5:].softmax(1)
    kl = (p_clean * (p_clean.log() - p_adv.log())).sum() / 5
    torch.testing.assert_close(loss.double(), direct_soft_ce(z, targets) + 6.0 * kl)
    assert float(metrics["kl"].value) == pytest.approx(float(kl.detach()), rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("target", ["two_hot", "hard"])
def test_natural_expert_loss(target):
    net = _tiny_network()
    objective = DucatNatural(active_ducat(DucatConfig(enabled=True, natural_target=target)))
    gen = torch.Generator().manual_seed(4)
    x, y = torch.rand(5, 4, generator=gen), torch.randint(0, C, (5,), generator=gen)
    loss, _ = objective.loss(net, x, y)
    z = net(x)
    if target == "two_hot":
        expected = direct_soft_ce(z, two_hot_targets(y, C, 0.75, 0.25))
    else:
        expected = direct_soft_ce(z, nn.functional.one_hot(y, 2 * C).float())
    torch.testing.assert_close(loss.double(), expected)


def test_the_loss_pulls_adversarial_inputs_to_the_dummy_class():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 2 * C))
    objective = active_ducat(DucatConfig(enabled=True))
    x, x_adv = torch.rand(8, 4), torch.rand(8, 4) + 2.0
    y = torch.arange(8) % C
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(400):
        loss, metrics = objective.loss(net, x, x_adv, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    # The adversarial half is now predicted as dummies of the right class; the fold recovers them.
    assert float(metrics["adv_dummy"].value) == 1.0 and float(metrics["adv_acc"].value) == 1.0


def test_activation_schedule_is_a_fraction_of_the_run():
    paper = DucatConfig(enabled=True)
    assert first_active_epoch(130, paper) == 105
    assert [e for e in range(1, 131) if is_active(e, 130, paper)] == list(range(105, 131))
    assert first_active_epoch(3, paper) == 3  # a short run keeps the late shape
    assert all(is_active(e, 5, DucatConfig(enabled=True, start=0.0)) for e in range(1, 6))
    assert not any(is_active(e, 130, DucatConfig(enabled=False)) for e in range(1, 131))
    assert math.isclose(DucatConfig().start * 130, 105)
