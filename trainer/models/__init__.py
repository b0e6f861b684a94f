"""Image classifiers: [0,1] NCHW inputs in, (N, num_classes) logits out, normalisation inside."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from trainer.config import ARCHS, ModelConfig
from trainer.errors import ConfigError
from trainer.models.normalize import Normalize
from trainer.models.preact_resnet import PreActResNet18
from trainer.models.resnet import ResNet18
from trainer.models.small_cnn import SmallCNN
from trainer.models.wide_resnet import WideResNet

__all__ = ["Normalize", "PreActResNet18", "ResNet18", "SmallCNN", "WideResNet", "build_model"]


def build_model(cfg: ModelConfig, *, num_classes: int, in_channels: int, image_size: int,
                mean: Sequence[float], std: Sequence[float]) -> nn.Module:
    """The network named by `cfg.arch`, freshly initialised from the default torch RNG only, so that
    `torch.manual_seed(s)` followed by this call always gives the same weights."""
    if not 0.0 <= cfg.dropout < 1.0:
        raise ConfigError(f"config field 'model.dropout' = {cfg.dropout!r}: expected a rate in [0, 1)")
    if len(mean) != in_channels or len(std) != in_channels:
        raise ValueError(f"build_model: mean {tuple(mean)} and std {tuple(std)} "
                         f"need {in_channels} values each")
    if cfg.arch == "small_cnn":
        return SmallCNN(num_classes, in_channels, image_size, mean, std, dropout=cfg.dropout)
    if cfg.arch == "preact_resnet18":
        return PreActResNet18(num_classes, in_channels, mean, std, dropout=cfg.dropout)
    if cfg.arch == "resnet18":
        return ResNet18(num_classes, in_channels, mean, std, dropout=cfg.dropout)
    if cfg.arch == "wrn":
        if cfg.depth < 10 or (cfg.depth - 4) % 6 != 0:
            raise ConfigError(f"config field 'model.depth' = {cfg.depth!r}: expected 6n + 4 with n >= 1")
        if cfg.widen < 1:
            raise ConfigError(f"config field 'model.widen' = {cfg.widen!r}: expected an integer >= 1")
        return WideResNet(num_classes, in_channels, mean, std, depth=cfg.depth, widen=cfg.widen,
                          dropout=cfg.dropout)
    raise ConfigError(f"config field 'model.arch' = {cfg.arch!r}: expected one of {ARCHS}")
