"""Every architecture: shapes, normalisation inside, dropout placement, determinism, layouts."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from generalist_trainer.trainer.config import ModelConfig
from generalist_trainer.trainer.errors import ConfigError
from generalist_trainer.trainer.models import Normalize, build_model

# (arch config, in_channels, image size, expected dropout modules when dropout > 0)
CASES = {
    "small_cnn": (ModelConfig(arch="small_cnn"), 1, 28, 2),  # before and after the hidden linear layer
    "preact_resnet18": (ModelConfig(arch="preact_resnet18"), 3, 16, 8),  # one per block, 4 x 2 blocks
    "resnet18": (ModelConfig(arch="resnet18"), 3, 16, 8),
    "wrn": (ModelConfig(arch="wrn", depth=10, widen=1), 3, 32, 3),  # (10 - 4) / 6 = 1 block per group
}
NUM_CLASSES = 5


def make(name: str, dropout: float = 0.0, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    cfg, channels, size, _ = CASES[name]
    cfg = ModelConfig(arch=cfg.arch, depth=cfg.depth, widen=cfg.widen, dropout=dropout)
    torch.manual_seed(seed)
    model = build_model(cfg, num_classes=NUM_CLASSES, in_channels=channels, image_size=size,
                        mean=(0.4,) * channels, std=(0.2,) * channels)
    x = torch.rand(2, channels, size, size, generator=torch.Generator().manual_seed(1))
    return model, x


@pytest.mark.parametrize("name", CASES)
def test_logits_shape_finite_and_normalisation_inside(name):
    model, x = make(name)
    model.eval()
    assert model.num_classes == NUM_CLASSES
    assert isinstance(next(model.children()), Normalize)  # the first layer
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (2, NUM_CLASSES) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()

    state = model.state_dict()
    assert state["normalize.mean"].shape == (1, x.shape[1], 1, 1)
    assert state["normalize.std"].shape == (1, x.shape[1], 1, 1)
    other = copy.deepcopy(model)
    other.normalize.mean.fill_(0.6)
    with torch.no_grad():
        assert not torch.allclose(other(x), logits)


@pytest.mark.parametrize("name", CASES)
def test_train_mode_forward_and_channels_last(name):
    model, x = make(name)
    model.train()
    assert torch.isfinite(model(x)).all()
    model.eval()
    with torch.no_grad():
        reference = model(x)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        assert torch.allclose(model(x_cl), reference, atol=1e-5, rtol=1e-4)
        channels_last_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
        assert torch.allclose(channels_last_model(x_cl), reference, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", CASES)
def test_dropout_placement(name):
    expected = CASES[name][3]
    without, _ = make(name, dropout=0.0)
    assert not any(isinstance(m, nn.Dropout) for m in without.modules())
    model, x = make(name, dropout=0.3)
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == expected and all(d.p == 0.3 for d in drops)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))  # dropout inactive in eval mode


def test_small_cnn_dropout_around_hidden_layer():
    model, _ = make("small_cnn", dropout=0.5)
    kinds = [type(m) for m in model.classifier]
    assert kinds == [nn.Flatten, nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert model.classifier[2].out_features == 256


@pytest.mark.parametrize("name", ["preact_resnet18", "resnet18", "wrn"])
def test_resnet_dropout_between_the_two_convolutions(name):
    model, x = make(name, dropout=0.5)
    # Record the call order of every block's conv1 / dropout / conv2 during one forward pass.
    order: list[tuple[str, str]] = []
    hooks = []
    for block_name, block in model.named_modules():
        if getattr(block, "dropout", None) is not None:
            for part in ("conv1", "dropout", "conv2"):
                hooks.append(getattr(block, part).register_forward_hook(
                    lambda m, i, o, b=block_name, p=part: order.append((b, p))))
    model.eval()
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    assert len(order) == 3 * CASES[name][3]
    for i in range(0, len(order), 3):
        assert [p for _, p in order[i:i + 3]] == ["conv1", "dropout", "conv2"]
        assert len({b for b, _ in order[i:i + 3]}) == 1


def test_small_cnn_any_size_and_channels():
    for channels, size in ((3, 32), (1, 12), (2, 9)):
        torch.manual_seed(0)
        model = build_model(ModelConfig(), num_classes=3, in_channels=channels, image_size=size,
                            mean=(0.5,) * channels, std=(0.5,) * channels).eval()
        with torch.no_grad():
            assert model(torch.rand(2, channels, size, size)).shape == (2, 3)


@pytest.mark.parametrize("name", CASES)
def test_same_seed_same_initialisation(name):
    a, _ = make(name, seed=3)
    b, _ = make(name, seed=3)
    c, _ = make(name, seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())


def test_wrn_depth_and_width():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="wrn", depth=16, widen=2), num_classes=10, in_channels=3,
                        image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    assert [len(g) for g in (model.block1, model.block2, model.block3)] == [2, 2, 2]
    assert model.fc.in_features == 128


def test_invalid_configs_raise_config_error():
    kwargs = dict(num_classes=10, in_channels=1, image_size=28, mean=(0.5,), std=(0.5,))
    with pytest.raises(ConfigError, match="model.arch"):
        build_model(ModelConfig(arch="vgg16"), **kwargs)
    with pytest.raises(ConfigError, match="model.depth"):
        build_model(ModelConfig(arch="wrn", depth=12), **kwargs)
    with pytest.raises(ConfigError, match="model.dropout"):
        build_model(ModelConfig(dropout=1.0), **kwargs)
