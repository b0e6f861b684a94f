"""Image classifiers: [0,1] NCHW inputs in, (N, num_classes) logits out, normalisation inside."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError
from ..registry import MODELS
from .normalize import Normalize
from .preact_resnet import PreActResNet18
from .resnet import ResNet18
from .small_cnn import SmallCNN
from .wide_resnet import WideResNet

__all__ = ["Normalize", "PreActResNet18", "ResNet18", "SmallCNN", "WideResNet", "build_model", "with_dummy_classes"]

# A model builder: (ModelConfig, *, num_classes, in_channels, image_size, mean, std) -> nn.Module, registered
# under its `model.arch` name with `@MODELS.register(name)`; it draws its initial weights from the default torch RNG.


@MODELS.register("small_cnn")
def small_cnn(cfg: ModelConfig, *, num_classes: int, in_channels: int, image_size: int, mean: Sequence[float],
              std: Sequence[float]) -> nn.Module:
    return SmallCNN(num_classes, in_channels, image_size, mean, std, dropout=cfg.dropout)


@MODELS.register("preact_resnet18")
def preact_resnet18(cfg: ModelConfig, *, num_classes: int, in_channels: int, image_size: int,
                    mean: Sequence[float], std: Sequence[float]) -> nn.Module:
    return PreActResNet18(num_classes, in_channels, mean, std, dropout=cfg.dropout)


@MODELS.register("resnet18")
def resnet18(cfg: ModelConfig, *, num_classes: int, in_channels: int, image_size: int, mean: Sequence[float],
             std: Sequence[float]) -> nn.Module:
    return ResNet18(num_classes, in_channels, mean, std, dropout=cfg.dropout)


@MODELS.register("wrn")
def wrn(cfg: ModelConfig, *, num_classes: int, in_channels: int, image_size: int, mean: Sequence[float],
        std: Sequence[float]) -> nn.Module:
    if cfg.depth < 10 or (cfg.depth - 4) % 6 != 0:
        raise ConfigError(f"config field 'model.depth' = {cfg.depth!r}: expected 6n + 4 with n >= 1")
    if cfg.widen < 1:
        raise ConfigError(f"config field 'model.widen' = {cfg.widen!r}: expected an integer >= 1")
    return WideResNet(num_classes, in_channels, mean, std, depth=cfg.depth, widen=cfg.widen, dropout=cfg.dropout)


def build_model(cfg: ModelConfig, *, num_classes: int, in_channels: int, image_size: int,
                mean: Sequence[float], std: Sequence[float]) -> nn.Module:
    """The network named by `cfg.arch` (trainer.registry.MODELS), freshly initialised from the default torch RNG
    only, so that `torch.manual_seed(s)` followed by this call always gives the same weights."""
    if not 0.0 <= cfg.dropout < 1.0:
        raise ConfigError(f"config field 'model.dropout' = {cfg.dropout!r}: expected a rate in [0, 1)")
    if len(mean) != in_channels or len(std) != in_channels:
        raise ValueError(f"build_model: mean {tuple(mean)} and std {tuple(std)} "
                         f"need {in_channels} values each")
    if cfg.arch not in MODELS:
        raise ConfigError(f"config field 'model.arch' = {cfg.arch!r}: expected one of {MODELS.names()}")
    return MODELS.get(cfg.arch)(cfg, num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                                mean=mean, std=std)


def with_dummy_classes(model: nn.Module) -> nn.Module:
    """The same network with a 2C-class head, C its current `num_classes` (DUCAT, spec/ducat.md).

    Only the last layer is redrawn (from the default torch RNG, like `build_model`), so a seeded
    factory stays deterministic; the state_dict layout is that of `build_model(num_classes=2C)`.
    """
    reset = getattr(model, "reset_classifier", None)
    num_classes = getattr(model, "num_classes", None)
    if reset is None or not isinstance(num_classes, int):
        raise ConfigError(f"method.ducat.enabled: model {type(model).__name__} has no reset_classifier / "
                          f"num_classes, so it cannot get DUCAT's 2C-class head")
    reset(2 * num_classes)
    return model
