"""What the loader tests share: a toy dataset whose labels name their images, and batch-by-batch equality."""

from __future__ import annotations

import numpy as np
import torch

from generalist_trainer.trainer.data import ArrayDataset


def toy_dataset(count=50, side=8, channels=3):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (count, side, side, channels), dtype=np.uint8)
    # One class per point, so labels identify which image a batch row came from.
    return ArrayDataset(images, np.arange(count), count, "toy", (0.5,) * channels, (0.25,) * channels)


def epoch_batches(loader, epoch, start=0):
    """An epoch's batches, copied (a loader may reuse its buffers for the next batch)."""
    return [(x.clone(), y.clone()) for x, y in loader.batches(epoch, start=start)]


def assert_same_batches(got, expected):
    assert len(got) == len(expected)
    for k, ((x, y), (x2, y2)) in enumerate(zip(got, expected)):
        assert x.dtype == x2.dtype == torch.float32 and y.dtype == y2.dtype == torch.int64, f"batch {k}"
        torch.testing.assert_close(x, x2, rtol=0, atol=0, msg=f"images of batch {k} differ")
        torch.testing.assert_close(y, y2, rtol=0, atol=0, msg=f"labels of batch {k} differ")
