"""A seeded synthetic image source that a small network can learn in a few steps.

Each class has a smooth random template (a coarse random grid bilinearly upsampled, so random crops
and flips keep most of its look); an image is its class template plus Gaussian pixel noise,
quantised to uint8 like real data. The templates depend only on the shape and number of classes,
so the train and test splits share them and differ only in their noise and labels. Registered as "synthetic"
(at the end): its shape, classes and sizes are data.synthetic_* fields.
"""

from __future__ import annotations

import math

import numpy as np

from ..config import DataConfig
from ..errors import ConfigError
from ..registry import DATASETS
from .dataset import DatasetFacts, DatasetSpec

SYNTHETIC_SEED = 0x5EED
_SPLIT_STREAM = {"train": 1, "test": 2}
_COARSE_GRID = 4
# Templates span [_LOW, _LOW + _RANGE] so that most of the noise stays inside [0, 1] unclipped.
_LOW, _RANGE = 0.2, 0.6
_NOISE_STD = 0.2
# Memory bounds of a split's uint8 images and of the float32 class templates (see check_synthetic_config).
MAX_IMAGE_BYTES = 2**32
MAX_TEMPLATE_VALUES = 2**26
# Images whose float32 noise is drawn at once: bounds the temporary memory to ~16 bytes per pixel of a
# chunk instead of the whole split; the generator fills its draws in order, so chunks give the same images.
_CHUNK_IMAGES = 4096


def check_synthetic_config(shape: tuple[int, int, int], num_classes: int, size: int, size_field: str) -> None:
    """Raise ConfigError naming the data.* field that makes the synthetic source impossible.

    The source is built in memory, so sizes it cannot hold are refused here, with the field named,
    rather than by a MemoryError or the kernel's OOM killer half-way through.
    """
    if len(shape) != 3 or any(int(s) < 1 for s in shape):
        raise ConfigError(f"config field 'data.synthetic_shape' = {shape!r}: "
                          "expected three positive integers (C, H, W)")
    if num_classes < 2:
        raise ConfigError(f"config field 'data.synthetic_classes' = {num_classes!r}: "
                          "expected an integer >= 2")
    if size < 1:
        raise ConfigError(f"config field '{size_field}' = {size!r}: expected an integer >= 1")
    pixels = math.prod(int(s) for s in shape)
    if num_classes * pixels > MAX_TEMPLATE_VALUES:
        raise ConfigError(f"config field 'data.synthetic_classes' = {num_classes!r}: {num_classes} templates of "
                          f"shape {tuple(shape)} exceed the {MAX_TEMPLATE_VALUES} template values the source "
                          "holds in memory; expected fewer classes or a smaller data.synthetic_shape")
    if size * pixels > MAX_IMAGE_BYTES:
        raise ConfigError(f"config field '{size_field}' = {size!r}: {size} uint8 images of shape {tuple(shape)} "
                          f"exceed the {MAX_IMAGE_BYTES // 2**30} GiB the source holds in memory per split; "
                          "expected fewer images or a smaller data.synthetic_shape")


def class_templates(shape: tuple[int, int, int], num_classes: int) -> np.ndarray:
    """Per-class mean images (K, C, H, W) float32 in [0.2, 0.8]."""
    channels, height, width = shape
    rng = np.random.default_rng(np.random.SeedSequence([SYNTHETIC_SEED, 0]))
    coarse = rng.random((num_classes, channels, _COARSE_GRID, _COARSE_GRID))
    rows = _interpolation_matrix(height, _COARSE_GRID)  # (H, G)
    cols = _interpolation_matrix(width, _COARSE_GRID)  # (W, G)
    smooth = np.einsum("hg,kcgf,wf->kchw", rows, coarse, cols)
    return (_LOW + _RANGE * smooth).astype(np.float32)


def make_synthetic(shape: tuple[int, int, int], num_classes: int, size: int,
                   split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W, C) uint8 and balanced labels (N,) int64 of one split."""
    templates = class_templates(shape, num_classes)
    rng = np.random.default_rng(np.random.SeedSequence([SYNTHETIC_SEED, _SPLIT_STREAM[split]]))
    labels = rng.permutation(np.arange(size) % num_classes).astype(np.int64)
    pixels = np.empty((size, *shape), dtype=np.uint8)  # (N, C, H, W)
    for start in range(0, size, _CHUNK_IMAGES):
        chunk = labels[start:start + _CHUNK_IMAGES]
        noisy = templates[chunk] + _NOISE_STD * rng.standard_normal((len(chunk), *shape), dtype=np.float32)
        pixels[start:start + len(chunk)] = np.rint(np.clip(noisy, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.ascontiguousarray(pixels.transpose(0, 2, 3, 1)), labels


def synthetic_stats(shape: tuple[int, int, int],
                    num_classes: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units of the balanced class mix (clipping of the noise ignored)."""
    templates = class_templates(shape, num_classes).astype(np.float64)
    mean = templates.mean(axis=(0, 2, 3))
    std = np.sqrt(templates.var(axis=(0, 2, 3)) + _NOISE_STD**2)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _interpolation_matrix(size: int, coarse: int) -> np.ndarray:
    """(size, coarse) weights of linear interpolation from `coarse` evenly spread knots to `size` pixels."""
    positions = np.linspace(0.0, coarse - 1, size) if size > 1 else np.zeros(1)
    left = np.minimum(np.floor(positions).astype(int), coarse - 2)
    frac = positions - left
    weights = np.zeros((size, coarse))
    weights[np.arange(size), left] = 1.0 - frac
    weights[np.arange(size), left + 1] = frac
    return weights


# ---------------------------------------------------------------------------------------------
# Registry entry: the config sets the shape and the classes, so the facts are a function of it.

def _read_synthetic(cfg: DataConfig, split: str, folder: None) -> tuple[np.ndarray, np.ndarray]:
    size, size_field = ((cfg.synthetic_train_size, "data.synthetic_train_size") if split == "train"
                        else (cfg.synthetic_test_size, "data.synthetic_test_size"))
    shape = _shape(cfg)
    check_synthetic_config(shape, cfg.synthetic_classes, size, size_field)
    return make_synthetic(shape, cfg.synthetic_classes, size, split)


def _synthetic_facts(cfg: DataConfig) -> DatasetFacts:
    mean, std = synthetic_stats(_shape(cfg), cfg.synthetic_classes)
    return DatasetFacts(cfg.synthetic_classes, mean, std)


def _shape(cfg: DataConfig) -> tuple[int, ...]:
    # A tuple of any length: check_synthetic_config names data.synthetic_shape when it is not (C, H, W).
    return tuple(int(s) for s in cfg.synthetic_shape)


def _config_for_model(channels: int, size: int, classes: int) -> DataConfig:
    return DataConfig(dataset="synthetic", synthetic_shape=(channels, size, size), synthetic_classes=classes)


DATASETS.register("synthetic")(DatasetSpec(read=_read_synthetic, facts=_synthetic_facts, flip=True,
                                           config_for_model=_config_for_model))
