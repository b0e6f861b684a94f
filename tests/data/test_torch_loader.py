"""TorchLoader: a DataLoader with CPU transforms that yields CpuLoader's batches, sharded and resumable."""

import pytest
import torch

from generalist_trainer.trainer.data import CpuLoader, TorchLoader
from generalist_trainer.trainer.errors import ConfigError

from .loader_batches import assert_same_batches, epoch_batches, toy_dataset


@pytest.mark.parametrize("shuffle,padding,flip,drop_last", [
    (True, 2, True, True), (True, 2, True, False), (False, 0, False, False), (False, 1, True, True),
])
def test_identical_to_cpu_loader(shuffle, padding, flip, drop_last):
    ds = toy_dataset()
    kwargs = dict(shuffle=shuffle, padding=padding, flip=flip, seed=3, drop_last=drop_last)
    cpu, torch_loader = CpuLoader(ds, 16, **kwargs), TorchLoader(ds, 16, device="cpu", **kwargs)
    assert len(torch_loader) == len(cpu)
    for epoch in (0, 2):
        assert_same_batches(epoch_batches(torch_loader, epoch), epoch_batches(cpu, epoch))


def test_worker_processes_yield_the_same_batches_and_resume_after_an_abandoned_pass():
    ds = toy_dataset(count=40)
    kwargs = dict(shuffle=True, padding=2, flip=True, seed=7, drop_last=True)
    expected = epoch_batches(CpuLoader(ds, 8, **kwargs), 1)
    loader = TorchLoader(ds, 8, device="cpu", num_workers=2, **kwargs)
    assert loader.loader.persistent_workers
    assert_same_batches(epoch_batches(loader, 1), expected)
    # Stop a pass early (a run stopped mid-epoch), then resume: the persistent workers must not leak
    # batches of the abandoned pass into the new one.
    abandoned = loader.batches(0)
    next(abandoned)
    abandoned.close()
    assert_same_batches(epoch_batches(loader, 1, start=2), expected[2:])


@pytest.mark.parametrize("world_size", [2, 4])
def test_rank_shards_concatenate_to_the_global_batch(world_size):
    ds = toy_dataset()  # 50 points, batch 8, last global batch of 2 rows kept
    kwargs = dict(shuffle=True, padding=2, flip=True, seed=1, drop_last=False)
    whole = epoch_batches(TorchLoader(ds, 8, device="cpu", **kwargs), 1)
    per_rank = [epoch_batches(TorchLoader(ds, 8, device="cpu", rank=r, world_size=world_size, **kwargs), 1)
                for r in range(world_size)]
    assert all(len(b) == len(whole) for b in per_rank)
    for k, (x, y) in enumerate(whole):
        torch.testing.assert_close(torch.cat([b[k][0] for b in per_rank]), x, rtol=0, atol=0)
        torch.testing.assert_close(torch.cat([b[k][1] for b in per_rank]), y, rtol=0, atol=0)
    # The later ranks' share of the short last batch is empty, with the right shapes.
    assert per_rank[-1][-1][0].shape == (0, 3, 8, 8) and per_rank[-1][-1][1].shape == (0,)


def test_resume_from_any_batch_equals_the_tail_of_a_full_pass():
    ds = toy_dataset()
    loader = TorchLoader(ds, 8, device="cpu", shuffle=True, padding=2, flip=True, seed=5, drop_last=True)
    full = epoch_batches(loader, 3)
    for start in (1, 4, len(full)):
        assert_same_batches(epoch_batches(loader, 3, start=start), full[start:])


def test_seeds_and_epochs_change_the_batches():
    ds = toy_dataset()
    make = lambda seed: TorchLoader(ds, 8, device="cpu", shuffle=True, padding=2, flip=True, seed=seed)  # noqa: E731
    first = epoch_batches(make(5), 3)[0]
    assert not torch.equal(first[1], epoch_batches(make(6), 3)[0][1])
    assert not torch.equal(first[1], epoch_batches(make(5), 4)[0][1])


def test_bad_arguments_are_config_errors():
    ds = toy_dataset()
    with pytest.raises(ConfigError, match="data.num_workers' = -1"):
        TorchLoader(ds, 8, device="cpu", num_workers=-1)
    with pytest.raises(ConfigError, match="multiple of the world size 3"):
        TorchLoader(ds, 8, device="cpu", world_size=3)
    loader = TorchLoader(ds, 8, device="cpu")
    with pytest.raises(ConfigError, match="start batch -1"):
        loader.batches(0, start=-1)
    with pytest.raises(ConfigError, match="epoch -2"):
        loader.batches(-2)
