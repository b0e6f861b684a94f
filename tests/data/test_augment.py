"""Crop-with-padding and flip: content preserved as a shifted window, flips mirror, defaults per dataset."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from generalist_trainer.trainer.data import augmentation_defaults
from generalist_trainer.trainer.data.augment import crop_and_flip, draw_crop_offsets, draw_flips
from generalist_trainer.trainer.errors import ConfigError


def test_crop_is_the_window_of_the_padded_image_at_its_offset():
    images = torch.randint(0, 256, (5, 2, 7, 7), dtype=torch.uint8)
    offsets = torch.tensor([[0, 0], [6, 6], [3, 3], [0, 5], [2, 1]])
    out = crop_and_flip(images, offsets, torch.zeros(5, dtype=torch.bool), padding=3)
    padded = F.pad(images, (3, 3, 3, 3))
    assert out.shape == images.shape and out.dtype == torch.uint8
    for i, (r, c) in enumerate(offsets.tolist()):
        torch.testing.assert_close(out[i], padded[i, :, r:r + 7, c:c + 7], rtol=0, atol=0)
    torch.testing.assert_close(out[2], images[2], rtol=0, atol=0)  # centred window: the image itself


def test_flip_mirrors_columns_after_the_crop():
    images = torch.rand(4, 3, 5, 5)
    flips = torch.tensor([True, False, True, False])
    out = crop_and_flip(images, torch.zeros(4, 2, dtype=torch.int64), flips, padding=0)
    torch.testing.assert_close(out[flips], images[flips].flip(-1), rtol=0, atol=0)
    torch.testing.assert_close(out[~flips], images[~flips], rtol=0, atol=0)
    offsets = torch.tensor([[1, 2]] * 4)
    both = crop_and_flip(images, offsets, flips, padding=1)
    torch.testing.assert_close(both[0], F.pad(images, (1, 1, 1, 1))[0, :, 1:6, 2:7].flip(-1), rtol=0, atol=0)


def test_draws_stay_in_range():
    rng = np.random.default_rng(0)
    offsets = draw_crop_offsets(rng, 1000, padding=4)
    assert offsets.shape == (1000, 2) and offsets.min() == 0 and offsets.max() == 8
    flips = draw_flips(rng, 1000, flip=True)
    assert 400 < flips.sum() < 600
    assert not draw_flips(rng, 10, flip=False).any() and not draw_crop_offsets(rng, 10, 0).any()


@pytest.mark.parametrize("name, size, expected", [
    ("cifar10", 32, (4, True)), ("cifar100", 32, (4, True)), ("svhn", 32, (4, False)),
    ("synthetic", 32, (4, True)), ("mnist", 28, (2, False)), ("fashion-mnist", 28, (2, True)),
    ("synthetic", 12, (1, True)),
])
def test_defaults(name, size, expected):
    assert augmentation_defaults(name, size) == expected


def test_unknown_dataset():
    with pytest.raises(ConfigError, match="data.dataset"):
        augmentation_defaults("imagenet", 224)
