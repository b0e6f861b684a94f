"""Generalist: schedule values at the knots, averaging against a direct per-tensor formula, redistribution."""

import copy

import pytest
import torch

from generalist_trainer.trainer.config import GeneralistConfig, load_config
from generalist_trainer.trainer.methods.generalist import Generalist
from generalist_trainer.trainer.methods.generalist_schedule import (
    distorted_sync_warning,
    ema_decay,
    first_sync_epoch,
    in_sync_window,
    is_sync_epoch,
    mix_beta,
    sync_period_epochs,
    sync_steps_of_epoch,
)
from generalist_trainer.trainer.models import build_model

PAPER = GeneralistConfig()


def test_decay_follows_k_plus_one_over_k_plus_ten_and_caps_at_0999():
    assert ema_decay(0, PAPER) == pytest.approx(0.1)
    assert ema_decay(90, PAPER) == pytest.approx(91 / 100)
    assert ema_decay(8989, PAPER) < 0.999
    assert ema_decay(8990, PAPER) == pytest.approx(0.999)
    assert ema_decay(10**6, PAPER) == 0.999


def test_beta_at_the_knots_of_a_120_epoch_run():
    assert [mix_beta(e, 120, PAPER) for e in (1, 40, 80)] == [1.0, 1.0, 1.0]
    assert mix_beta(100, 120, PAPER) == pytest.approx(0.7)
    assert mix_beta(120, 120, PAPER) == pytest.approx(0.4)


def test_sync_epochs_reproduce_75_80_to_120_of_120():
    assert [e for e in range(1, 121) if is_sync_epoch(e, 120, PAPER)] == list(range(75, 121, 5))


def test_sync_epochs_scale_to_short_runs():
    assert first_sync_epoch(8, PAPER) == 5 and sync_period_epochs(8, PAPER) == 1
    assert [e for e in range(1, 9) if is_sync_epoch(e, 8, PAPER)] == [5, 6, 7, 8]
    assert [e for e in range(1, 25) if is_sync_epoch(e, 24, PAPER)] == [15, 16, 17, 18, 19, 20, 21, 22, 23, 24]


def test_sync_windows_are_the_authors_sync_epochs_at_120_epochs():
    every_step = GeneralistConfig(sync_mode="every_step")
    windows = GeneralistConfig(sync_mode="windows")
    for steps in (1, 3, 7):
        for epoch in range(1, 121):
            assert (sync_steps_of_epoch(epoch, 120, steps, windows)
                    == sync_steps_of_epoch(epoch, 120, steps, every_step)), (steps, epoch)


def test_sync_windows_keep_the_authors_shape_in_a_short_run():
    # 8 epochs of 156 steps (the study's run): every_step redistributes after all 624 steps of epochs 5-8.
    windows = GeneralistConfig(sync_mode="windows")
    run = [(e - 1) * 156 + b for e in range(1, 9) for b in sorted(sync_steps_of_epoch(e, 8, 156, windows))]
    assert sum(len(sync_steps_of_epoch(e, 8, 156, GeneralistConfig())) for e in range(1, 9)) == 624
    # Ten windows of 1/120 of the run (10.4 steps) ending at 75/120, 80/120, ..., 1: runs of consecutive steps.
    starts = [s for s in run if s - 1 not in run]
    ends = [s for s in run if s + 1 not in run]
    assert len(starts) == 10 and ends[-1] == 8 * 156 - 1  # the run's last step redistributes
    assert all(10 <= e - s + 1 <= 11 for s, e in zip(starts, ends))
    assert [e + 1 for e in ends] == [780 + 52 * k for k in range(10)]  # 1248 * (75 + 5k) / 120 steps done
    assert starts[0] + 1 == 770  # the first step that ends after 1248 * 74/120 = 769.6
    assert not in_sync_window(0.5, windows) and in_sync_window(1.0, windows)


def _generalist(sync_mode="every_step"):
    cfg = load_config(None, ["model.arch=small_cnn", f"method.generalist.sync_mode={sync_mode}",
                             "train.epochs=8", "attack.steps=2"])

    def factory():
        return build_model(cfg.model, num_classes=4, in_channels=1, image_size=12, mean=(0.5,), std=(0.25,))

    torch.manual_seed(0)
    return Generalist.from_config(cfg, factory, torch.device("cpu"))


def _perturb(method):
    gen = torch.Generator().manual_seed(1)
    for net in method.networks().values():
        for t in list(net.parameters()) + [b for b in net.buffers() if b.is_floating_point()]:
            t.data.add_(torch.randn(t.shape, generator=gen) * 0.1)
        for b in net.buffers():
            if not b.is_floating_point():
                b.add_(int(torch.randint(0, 50, (1,), generator=gen)))


def test_all_five_networks_start_from_one_initialisation():
    m = _generalist()
    ref = m.robust.state_dict()
    for net in m.networks().values():
        for k, v in net.state_dict().items():
            assert torch.equal(v, ref[k])


@pytest.mark.parametrize("redistribute", [False, True])
def test_average_and_mix_matches_direct_per_tensor_formula(redistribute):
    m = _generalist()
    _perturb(m)
    m.beta = 0.7
    d = 0.93
    sd = {k: copy.deepcopy(v.state_dict()) for k, v in m.networks().items()}
    m.average_and_mix(d, redistribute=redistribute)
    for key in sd["global"]:
        tr, tn = sd["robust"][key].double(), sd["natural"][key].double()
        sr = d * sd["avg_robust"][key].double() + (1 - d) * tr
        sn = d * sd["avg_natural"][key].double() + (1 - d) * tn
        g = d * sd["global"][key].double() + (1 - d) * (0.7 * sr + 0.3 * sn)
        if not sd["global"][key].is_floating_point():
            sr, sn, g = sr.round(), sn.round(), g.round()
        got = {k: v.state_dict()[key].double() for k, v in m.networks().items()}
        torch.testing.assert_close(got["avg_robust"], sr, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got["avg_natural"], sn, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got["global"], g, rtol=1e-5, atol=1e-6)
        if redistribute:
            assert torch.equal(got["robust"], got["global"]) and torch.equal(got["natural"], got["global"])
        else:
            assert torch.equal(got["robust"], tr) and torch.equal(got["natural"], tn)


def test_redistribution_copies_global_into_both_experts_and_keeps_momentum():
    m = _generalist(sync_mode="epoch_end")
    x, y = torch.rand(8, 1, 12, 12), torch.randint(0, 4, (8,))
    m.start_epoch(1)
    m.train_step(x, y)
    _perturb(m)
    momentum = {id(p): s["momentum_buffer"].clone() for p, s in m.robust_optimizer.state.items()}
    m.sync_epoch = True
    m.end_epoch(8)
    g = m.global_model.state_dict()
    for expert in (m.robust, m.natural):
        for k, v in expert.state_dict().items():
            assert torch.equal(v, g[k]), k
    for p, s in m.robust_optimizer.state.items():
        assert torch.equal(s["momentum_buffer"], momentum[id(p)])


def test_train_step_moves_experts_apart_and_global_towards_robust_average():
    m = _generalist()
    x, y = torch.rand(16, 1, 12, 12), torch.randint(0, 4, (16,))
    m.start_epoch(1)  # beta = 1, no sync
    before = {k: v.clone() for k, v in m.global_model.state_dict().items()}
    metrics = m.train_step(x, y)
    assert {"robust_loss", "natural_loss", "decay"} <= set(metrics)
    assert m.global_step == 1
    changed = [k for k, v in m.global_model.state_dict().items() if v.is_floating_point()
               and not torch.equal(v, before[k])]
    assert changed, "G did not move"
    assert any(not torch.equal(a, b) for a, b in zip(m.robust.parameters(), m.natural.parameters()))
    # With beta = 1 the natural side does not enter G: G = d G + (1-d) S_R exactly.
    d = 0.1
    for k, v in m.global_model.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, d * before[k] + (1 - d) * m.avg_robust.state_dict()[k])


def test_windows_redistribute_after_exactly_the_window_steps():
    m = _generalist(sync_mode="windows")  # train.epochs = 8
    m.set_epoch_length(30)  # 240 steps: windows of 2 steps ending at steps 150, 160, ..., 240
    x, y = torch.rand(8, 1, 12, 12), torch.randint(0, 4, (8,))
    m.start_epoch(5)
    assert m.sync_steps == {148, 149}
    m.global_step = 146
    for step in (146, 147, 148, 149):
        m.train_step(x, y)
        same = all(torch.equal(a, b) for a, b in zip(m.robust.parameters(), m.global_model.parameters()))
        assert same == (step in (148, 149)), step


def test_every_step_warns_when_a_short_run_would_freeze_the_experts(caplog):
    assert "4 of the 8 epochs (50% of the run" in distorted_sync_warning(8, PAPER)
    assert distorted_sync_warning(120, PAPER) is None and distorted_sync_warning(100, PAPER) is None
    assert distorted_sync_warning(8, GeneralistConfig(sync_mode="windows")) is None
    with caplog.at_level("INFO"):
        _generalist()  # train.epochs = 8, every_step
    assert "sync_mode windows keeps the authors' shape" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO"):
        _generalist(sync_mode="windows")
    assert "sync_mode" not in caplog.text
