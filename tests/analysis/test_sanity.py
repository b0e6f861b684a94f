"""Each sanity check fires on a model (or result) built to trigger it and stays quiet on a normal one."""

import warnings

import pytest
import torch
from torch import nn

from generalist_trainer.trainer.analysis.eps_sweep import accuracy_vs_eps
from generalist_trainer.trainer.analysis.sanity import (
    CHECKS,
    RobustnessSanityWarning,
    check_accuracy_vs_eps,
    check_autoattack_vs_pgd,
    check_deterministic,
    check_eps_zero_matches_clean,
    check_train_mode,
    check_zero_gradients,
    curve_checks,
    model_checks,
    run_sanity_checks,
)
from generalist_trainer.trainer.config import ModelConfig
from generalist_trainer.trainer.models import build_model

LEVELS = torch.tensor([0.2, 0.5, 0.8])


def brightness_data(n: int = 60) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 1, 6, 6) images of one brightness level per class (3 balanced classes) plus a little noise."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 3
    x = (LEVELS[y].view(n, 1, 1, 1) + 0.05 * torch.randn(n, 1, 6, 6, generator=g)).clamp(0, 1)
    return x, y


class Brightness(nn.Module):
    """Logits -100 (mean brightness - level_c)^2: the class of the nearest level, perfectly accurate.

    quantize: the mean is rounded to 0.1 first, a non-differentiable step (zero input gradients).
    noise: Gaussian noise of that size is added to the logits even in eval mode (a random forward).
    """

    def __init__(self, quantize: bool = False, noise: float = 0.0):
        super().__init__()
        self.quantize, self.noise = quantize, noise

    def forward(self, x):
        m = x.flatten(1).mean(1, keepdim=True)
        if self.quantize:
            m = torch.round(m * 10) / 10
        logits = -100 * (m - LEVELS) ** 2
        return logits + self.noise * torch.randn_like(logits) if self.noise else logits


class StuckInTrainBN(nn.BatchNorm2d):
    """A BatchNorm whose train() ignores the requested mode: it normalises with batch statistics in eval mode."""

    def train(self, mode: bool = True):
        return super().train(True)


def small_cnn(norm_layer: nn.Module | None = None) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="small_cnn", dropout=0.3), num_classes=3, in_channels=1, image_size=6,
                        mean=(0.5,), std=(0.25,))
    if norm_layer is not None:
        model.features[0][1] = norm_layer
    return model.train()  # handed over in train mode, as trainer methods leave their networks


def test_normal_model_passes_every_model_check_and_is_left_as_it_was():
    model = small_cnn()
    x, y = brightness_data(24)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    assert model_checks(model, x, y) == []
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)


def test_train_mode_fires_on_a_module_stuck_in_train_mode_and_leaves_its_statistics_alone():
    model = small_cnn(StuckInTrainBN(32))
    x, _ = brightness_data(24)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    found = check_train_mode(model, x)
    assert found is not None and found.check == "train_mode"
    assert found.details["modules"] == ["features.0.1"]
    assert "eval mode" in found.explanation
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # running stats untouched


def test_train_mode_fires_on_batch_statistics_in_eval_mode():
    model = small_cnn(nn.BatchNorm2d(32, track_running_stats=False))
    x, _ = brightness_data(24)
    found = check_train_mode(model, x)
    assert found is not None and "batch statistics" in found.message


def test_zero_gradients_fires_on_a_quantised_model_only():
    x, y = brightness_data()
    found = check_zero_gradients(Brightness(quantize=True), x, y)
    assert found is not None and found.details["zero_points"] == len(x)
    assert check_zero_gradients(Brightness(), x, y) is None


def test_nondeterministic_forward_fires_on_a_random_model_and_keeps_the_global_rng():
    x, _ = brightness_data()
    rng = torch.get_rng_state()
    found = check_deterministic(Brightness(noise=1.0), x)
    assert found is not None and found.details["relative_difference"] > 1e-4
    assert torch.equal(torch.get_rng_state(), rng)
    assert check_deterministic(Brightness(), x) is None


def test_autoattack_above_pgd():
    assert check_autoattack_vs_pgd({"clean": 0.8, "pgd20": 0.40, "cw20": 0.42, "autoattack": 0.45}).details[
        "attack"] == "pgd20"
    assert check_autoattack_vs_pgd({"clean": 0.8, "pgd20": 0.50, "cw20": 0.42, "autoattack": 0.45}) is not None
    assert check_autoattack_vs_pgd({"clean": 0.8, "pgd20": 0.46, "cw20": 0.47, "autoattack": 0.45}) is None
    assert check_autoattack_vs_pgd({"clean": 0.8, "autoattack": 0.45}) is None  # nothing to compare with


def test_accuracy_not_decreasing_fires_on_a_gradient_masking_model_only():
    x, y = brightness_data()
    radii = [0.05, 0.1, 0.25, 0.5]
    masked = accuracy_vs_eps(Brightness(quantize=True), x, y, radii, steps=10, batch_size=32)
    curve = [(p["eps"], p["accuracy"]) for p in masked["curve"]]
    found = check_accuracy_vs_eps(curve, largest_class_share=masked["largest_class_share"])
    # PGD cannot move through the rounding: at eps 0.5 the accuracy stays far above a third.
    assert found is not None and found.details["stuck"] and found.details["stuck"][0]["eps"] == 0.5
    normal = accuracy_vs_eps(Brightness(), x, y, radii, steps=10, batch_size=32)
    assert normal["clean"] == 1.0 and normal["curve"][-1]["accuracy"] == 0.0
    curve = [(p["eps"], p["accuracy"]) for p in normal["curve"]]
    assert check_accuracy_vs_eps(curve, largest_class_share=normal["largest_class_share"]) is None


def test_accuracy_rising_with_eps_fires():
    found = check_accuracy_vs_eps([(0.0, 0.9), (0.2, 0.6), (0.1, 0.5)])  # unsorted on purpose
    assert found is not None and found.details["rises"] == [
        {"from_eps": 0.1, "to_eps": 0.2, "from_accuracy": 0.5, "to_accuracy": 0.6}]
    assert check_accuracy_vs_eps([(0.0, 0.9), (0.1, 0.6), (0.2, 0.605)]) is None  # within the margin


def test_eps_zero_differs_from_clean_fires_on_a_random_model_only():
    x, y = brightness_data()
    torch.manual_seed(0)
    noisy = accuracy_vs_eps(Brightness(noise=30.0), x, y, [0.0], batch_size=32)
    assert noisy["curve"][0]["eps"] == 0.0
    found = check_eps_zero_matches_clean(noisy["clean"], noisy["curve"][0]["accuracy"])
    assert found is not None
    normal = accuracy_vs_eps(small_cnn(), x, y, [0.1], batch_size=32)  # 0 is added to the radii
    assert [p["eps"] for p in normal["curve"]] == [0.0, 0.1]
    assert curve_checks(normal["clean"], [(p["eps"], p["accuracy"]) for p in normal["curve"]]) == []


def test_findings_are_emitted_as_robustness_warnings_with_their_explanation():
    x, y = brightness_data()
    with pytest.warns(RobustnessSanityWarning) as record:
        findings = run_sanity_checks(Brightness(quantize=True), x, y, result={"pgd20": 0.3, "autoattack": 0.5})
    assert {f.check for f in findings} == {"zero_gradients", "autoattack_above_pgd"}
    messages = [str(w.message) for w in record]
    assert len(messages) == 2 and messages[0].startswith("[zero_gradients]") and "gradient masking" in messages[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a normal model and consistent results: nothing is emitted
        assert run_sanity_checks(Brightness(), x, y, result={"clean": 1.0, "pgd20": 0.5, "autoattack": 0.45},
                                 curve=[(0.0, 1.0), (0.1, 0.5)]) == []
    assert set(CHECKS) == {"train_mode", "zero_gradients", "nondeterministic_forward", "autoattack_above_pgd",
                           "accuracy_not_decreasing", "eps_zero_differs_from_clean"}
