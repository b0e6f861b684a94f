"""GpuLoader (run on the CPU device here): CpuLoader's batches bit for bit, rank shards, exact resume."""

import pytest
import torch

from generalist_trainer.trainer.data import CpuLoader, GpuLoader
from generalist_trainer.trainer.errors import ConfigError

from .loader_batches import assert_same_batches, epoch_batches, toy_dataset


@pytest.mark.parametrize("shuffle,padding,flip,drop_last", [
    (True, 2, True, True), (True, 2, True, False), (False, 0, False, False), (True, 3, False, True),
    (False, 1, True, False),
])
def test_identical_to_cpu_loader(shuffle, padding, flip, drop_last):
    ds = toy_dataset()
    kwargs = dict(shuffle=shuffle, padding=padding, flip=flip, seed=3, drop_last=drop_last)
    cpu, gpu = CpuLoader(ds, 16, **kwargs), GpuLoader(ds, 16, device="cpu", **kwargs)
    assert len(gpu) == len(cpu)
    for epoch in (0, 2):
        assert_same_batches(epoch_batches(gpu, epoch), epoch_batches(cpu, epoch))


def test_dataset_is_resident_on_the_device_once():
    ds = toy_dataset(count=20, side=6, channels=1)
    loader = GpuLoader(ds, 4, device="cpu", shuffle=True, padding=1, flip=True)
    assert loader.images.shape == (20, 6, 6, 1) and loader.images.dtype == torch.uint8
    assert loader.images.device == torch.device("cpu") and loader.labels.dtype == torch.int64
    assert loader.resident_bytes == 20 * 36 + 20 * 8
    x, y = next(iter(loader.batches(0)))
    assert x.shape == (4, 1, 6, 6) and x.is_contiguous() and x.device == loader.device


@pytest.mark.parametrize("world_size", [2, 4])
@pytest.mark.parametrize("drop_last", [True, False])
def test_rank_shards_concatenate_to_the_global_batch(world_size, drop_last):
    ds = toy_dataset()  # 50 points, batch 8: the last global batch has 2 rows when kept
    kwargs = dict(shuffle=True, padding=2, flip=True, seed=1, drop_last=drop_last)
    whole = epoch_batches(GpuLoader(ds, 8, device="cpu", **kwargs), 1)
    shards = [GpuLoader(ds, 8, device="cpu", rank=r, world_size=world_size, **kwargs) for r in range(world_size)]
    per_rank = [epoch_batches(s, 1) for s in shards]
    assert all(len(s) == len(whole) for s in shards) and all(len(b) == len(whole) for b in per_rank)
    for k, (x, y) in enumerate(whole):
        rows = [b[k] for b in per_rank]
        if len(y) == 8:
            assert all(len(ry) == 8 // world_size for _, ry in rows)
        torch.testing.assert_close(torch.cat([rx for rx, _ in rows]), x, rtol=0, atol=0)
        torch.testing.assert_close(torch.cat([ry for _, ry in rows]), y, rtol=0, atol=0)
    if not drop_last:  # 2 rows left: rank 0 takes them (world 4: 2 per rank) or all of them (world 2: 4 per rank)
        assert [len(b[-1][1]) for b in per_rank] == [2] + [0] * (world_size - 1)
        assert per_rank[-1][-1][0].shape == (0, 3, 8, 8)


def test_resume_from_any_batch_equals_the_tail_of_a_full_pass():
    ds = toy_dataset()
    loader = GpuLoader(ds, 8, device="cpu", shuffle=True, padding=2, flip=True, seed=5, drop_last=True)
    full = epoch_batches(loader, 3)
    for start in (1, 4, len(full)):
        assert_same_batches(epoch_batches(loader, 3, start=start), full[start:])


def test_seeds_and_epochs_change_the_batches():
    ds = toy_dataset()
    make = lambda seed: GpuLoader(ds, 8, device="cpu", shuffle=True, padding=2, flip=True, seed=seed)  # noqa: E731
    first = epoch_batches(make(5), 3)[0]
    assert not torch.equal(first[1], epoch_batches(make(6), 3)[0][1])
    assert not torch.equal(first[1], epoch_batches(make(5), 4)[0][1])
    # Same order, different augmentation draws only: padding 2 moves at least one image.
    no_shuffle = [GpuLoader(ds, 50, device="cpu", padding=2, flip=True, seed=s) for s in (0, 1)]
    (xa, ya), = no_shuffle[0].batches(0)
    (xb, yb), = no_shuffle[1].batches(0)
    assert torch.equal(ya, yb) and not torch.equal(xa, xb)


def test_bad_arguments_are_config_errors_naming_the_value():
    ds = toy_dataset()
    with pytest.raises(ConfigError, match="data.batch_size.*multiple of the world size 3"):
        GpuLoader(ds, 8, device="cpu", world_size=3)
    with pytest.raises(ConfigError, match="rank 2"):
        GpuLoader(ds, 8, device="cpu", rank=2, world_size=2)
    with pytest.raises(ConfigError, match="crop padding -1"):
        GpuLoader(ds, 8, device="cpu", padding=-1)
    loader = GpuLoader(ds, 8, device="cpu", drop_last=True)
    with pytest.raises(ConfigError, match=r"start batch 7: expected 0..6"):
        loader.batches(0, start=7)
    with pytest.raises(ConfigError, match="epoch -1"):
        loader.batches(-1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("shuffle,padding,flip,drop_last", [(True, 2, True, True), (False, 1, True, False)])
def test_on_cuda_the_batches_are_the_cpu_loaders_bit_for_bit(shuffle, padding, flip, drop_last):
    ds = toy_dataset()
    kwargs = dict(shuffle=shuffle, padding=padding, flip=flip, seed=3, drop_last=drop_last)
    gpu = GpuLoader(ds, 16, device="cuda", **kwargs)
    assert gpu.images.is_cuda and gpu.labels.is_cuda and gpu.images.dtype == torch.uint8
    got = epoch_batches(gpu, 2)
    assert all(x.is_cuda and y.is_cuda for x, y in got)
    assert_same_batches([(x.cpu(), y.cpu()) for x, y in got], epoch_batches(CpuLoader(ds, 16, **kwargs), 2))
    assert_same_batches([(x.cpu(), y.cpu()) for x, y in epoch_batches(gpu, 2, start=1)], [(x.cpu(), y.cpu())
                                                                                   for x, y in got[1:]])
