"""TorchLoader: a DataLoader with CPU transforms that yields CpuLoader's batches, sharded and resumable."""

import numpy as np
import pytest
import torch

from generalist_trainer.trainer.data import ArrayDataset, CpuLoader, TorchLoader
from generalist_trainer.trainer.errors import ConfigError


def _dataset(count=50, side=8, channels=3):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (count, side, side, channels), dtype=np.uint8)
    # One class per point, so labels identify which image a batch row came from.
    return ArrayDataset(images, np.arange(count), count, "toy", (0.5,) * channels, (0.25,) * channels)


def _epoch(loader, epoch, start=0):
    return [(x.clone(), y.clone()) for x, y in loader.batches(epoch, start=start)]


def _assert_same_batches(got, expected):
    assert len(got) == len(expected)
    for k, ((x, y), (x2, y2)) in enumerate(zip(got, expected)):
        assert x.dtype == x2.dtype == torch.float32 and y.dtype == y2.dtype == torch.int64, f"batch {k}"
        torch.testing.assert_close(x, x2, rtol=0, atol=0, msg=f"images of batch {k} differ")
        torch.testing.assert_close(y, y2, rtol=0, atol=0, msg=f"labels of batch {k} differ")


@pytest.mark.parametrize("shuffle,padding,flip,drop_last", [
    (True, 2, True, True), (True, 2, True, False), (False, 0, False, False), (False, 1, True, True),
])
def test_identical_to_cpu_loader(shuffle, padding, flip, drop_last):
    ds = _dataset()
    kwargs = dict(shuffle=shuffle, padding=padding, flip=flip, seed=3, drop_last=drop_last)
    cpu, torch_loader = CpuLoader(ds, 16, **kwargs), TorchLoader(ds, 16, device="cpu", **kwargs)
    assert len(torch_loader) == len(cpu)
    for epoch in (0, 2):
        _assert_same_batches(_epoch(torch_loader, epoch), _epoch(cpu, epoch))


def test_worker_processes_yield_the_same_batches_and_resume_after_an_abandoned_pass():
    ds = _dataset(count=40)
    kwargs = dict(shuffle=True, padding=2, flip=True, seed=7, drop_last=True)
    expected = _epoch(CpuLoader(ds, 8, **kwargs), 1)
    loader = TorchLoader(ds, 8, device="cpu", num_workers=2, **kwargs)
    assert loader.loader.persistent_workers
    _assert_same_batches(_epoch(loader, 1), expected)
    # Stop a pass early (a run stopped mid-epoch), then resume: the persistent workers must not leak
    # batches of the abandoned pass into the new one.
    abandoned = loader.batches(0)
    next(abandoned)
    abandoned.close()
    _assert_same_batches(_epoch(loader, 1, start=2), expected[2:])


@pytest.mark.parametrize("world_size", [2, 4])
def test_rank_shards_concatenate_to_the_global_batch(world_size):
    ds = _dataset()  # 50 points, batch 8, last global batch of 2 rows kept
    kwargs = dict(shuffle=True, padding=2, flip=True, seed=1, drop_last=False)
    whole = _epoch(TorchLoader(ds, 8, device="cpu", **kwargs), 1)
    per_rank = [_epoch(TorchLoader(ds, 8, device="cpu", rank=r, world_size=world_size, **kwargs), 1)
                for r in range(world_size)]
    assert all(len(b) == len(whole) for b in per_rank)
    for k, (x, y) in enumerate(whole):
        torch.testing.assert_close(torch.cat([b[k][0] for b in per_rank]), x, rtol=0, atol=0)
        torch.testing.assert_close(torch.cat([b[k][1] for b in per_rank]), y, rtol=0, atol=0)
    # The later ranks' share of the short last batch is empty, with the right shapes.
    assert per_rank[-1][-1][0].shape == (0, 3, 8, 8) and per_rank[-1][-1][1].shape == (0,)


def test_resume_from_any_batch_equals_the_tail_of_a_full_pass():
    ds = _dataset()
    loader = TorchLoader(ds, 8, device="cpu", shuffle=True, padding=2, flip=True, seed=5, drop_last=True)
    full = _epoch(loader, 3)
    for start in (1, 4, len(full)):
        _assert_same_batches(_epoch(loader, 3, start=start), full[start:])


def test_seeds_and_epochs_change_the_batches():
    ds = _dataset()
    make = lambda seed: TorchLoader(ds, 8, device="cpu", shuffle=True, padding=2, flip=True, seed=seed)  # noqa: E731
    first = _epoch(make(5), 3)[0]
    assert not torch.equal(first[1], _epoch(make(6), 3)[0][1])
    assert not torch.equal(first[1], _epoch(make(5), 4)[0][1])


def test_bad_arguments_are_config_errors():
    ds = _dataset()
    with pytest.raises(ConfigError, match="data.num_workers' = -1"):
        TorchLoader(ds, 8, device="cpu", num_workers=-1)
    with pytest.raises(ConfigError, match="multiple of the world size 3"):
        TorchLoader(ds, 8, device="cpu", world_size=3)
    loader = TorchLoader(ds, 8, device="cpu")
    with pytest.raises(ConfigError, match="start batch -1"):
        loader.batches(0, start=-1)
    with pytest.raises(ConfigError, match="epoch -2"):
        loader.batches(-2)
