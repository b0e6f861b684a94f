"""CpuLoader: batch format, seeding, exact resume at any batch, and augmentation that keeps content."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from generalist_trainer.trainer.data import CpuLoader
from generalist_trainer.trainer.errors import ConfigError

from .loader_batches import epoch_batches, toy_dataset


def _raw(ds, indices):
    return torch.from_numpy(ds.images[indices]).permute(0, 3, 1, 2).float() / 255


def test_batch_format_and_count():
    ds = toy_dataset()
    loader = CpuLoader(ds, 16, shuffle=True, padding=2, flip=True, seed=0, drop_last=False)
    batches = epoch_batches(loader, 1)
    assert len(loader) == len(batches) == 4
    assert [len(y) for _, y in batches] == [16, 16, 16, 2]
    for x, y in batches:
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 8, 8) and x.is_contiguous()
        assert y.dtype == torch.int64 and 0.0 <= x.min() and x.max() <= 1.0
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == list(range(50))  # each point once
    assert len(CpuLoader(ds, 16, shuffle=True, padding=0, flip=False, seed=0, drop_last=True)) == 3


def test_same_seed_same_batches_and_resume_equals_tail():
    ds = toy_dataset()
    make = lambda seed: CpuLoader(ds, 8, shuffle=True, padding=2, flip=True, seed=seed, drop_last=True)  # noqa: E731
    full = epoch_batches(make(5), 3)
    again = epoch_batches(make(5), 3)
    for (x, y), (x2, y2) in zip(full, again, strict=True):
        torch.testing.assert_close(x, x2, rtol=0, atol=0)
        torch.testing.assert_close(y, y2, rtol=0, atol=0)
    for start in (1, 4, len(full)):
        tail = epoch_batches(make(5), 3, start=start)
        assert len(tail) == len(full) - start
        for (x, y), (x2, y2) in zip(full[start:], tail, strict=True):
            torch.testing.assert_close(x, x2, rtol=0, atol=0)
            torch.testing.assert_close(y, y2, rtol=0, atol=0)
    other_seed = epoch_batches(make(6), 3)
    other_epoch = epoch_batches(make(5), 4)
    assert not torch.equal(full[0][1], other_seed[0][1])
    assert not torch.equal(full[0][1], other_epoch[0][1])


def test_no_augmentation_without_shuffle_gives_the_raw_images_in_order():
    ds = toy_dataset()
    loader = CpuLoader(ds, 16, shuffle=False, padding=0, flip=False, seed=0, drop_last=False)
    x = torch.cat([x for x, _ in loader.batches(7)])
    y = torch.cat([y for _, y in loader.batches(7)])
    torch.testing.assert_close(x, _raw(ds, np.arange(50)), rtol=0, atol=0)
    torch.testing.assert_close(y, torch.arange(50), rtol=0, atol=0)


def test_crop_is_a_shifted_window_of_the_padded_image():
    ds = toy_dataset(count=40)
    loader = CpuLoader(ds, 40, shuffle=False, padding=2, flip=False, seed=1, drop_last=False)
    (x, _), = loader.batches(0)
    padded = F.pad(_raw(ds, np.arange(40)), (2, 2, 2, 2))
    found = []
    for i in range(40):
        windows = {(r, c): padded[i, :, r:r + 8, c:c + 8] for r in range(5) for c in range(5)}
        matches = [corner for corner, window in windows.items() if torch.equal(x[i], window)]
        assert matches, f"sample {i} is not a window of its padded image"
        found.append(matches[0])
    assert len(set(found)) > 5  # offsets vary per sample


def test_flip_mirrors_about_half_of_the_images():
    ds = toy_dataset(count=64)
    loader = CpuLoader(ds, 64, shuffle=False, padding=0, flip=True, seed=2, drop_last=False)
    (x, _), = loader.batches(0)
    raw = _raw(ds, np.arange(64))
    flipped = [torch.equal(x[i], raw[i].flip(-1)) for i in range(64)]
    assert all(f or torch.equal(x[i], raw[i]) for i, f in enumerate(flipped))
    assert 16 < sum(flipped) < 48


def test_global_rng_untouched():
    np_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state().clone()
    loader = CpuLoader(toy_dataset(), 8, shuffle=True, padding=2, flip=True, seed=0, drop_last=False)
    epoch_batches(loader, 1)
    np.testing.assert_array_equal(np.random.get_state()[1], np_state)
    assert torch.equal(torch.get_rng_state(), torch_state)


def test_empty_dataset_and_bad_arguments():
    empty = toy_dataset().subset(np.arange(0))
    loader = CpuLoader(empty, 8, shuffle=True, padding=2, flip=True, seed=0, drop_last=False)
    assert len(loader) == 0 and epoch_batches(loader, 1) == []
    with pytest.raises(ConfigError, match="batch size"):
        CpuLoader(empty, 0)
    with pytest.raises(ConfigError, match="start batch 5"):
        CpuLoader(toy_dataset(), 16, drop_last=True).batches(0, start=5)


@pytest.mark.parametrize("drop_last", [True, False])
def test_ranks_split_every_global_batch_into_contiguous_slices(drop_last):
    ds = toy_dataset(count=50)
    make = lambda **kw: CpuLoader(ds, 16, shuffle=True, padding=2, flip=True, seed=3,  # noqa: E731
                                  drop_last=drop_last, **kw)
    whole = epoch_batches(make(), 2)
    shards = [epoch_batches(make(rank=r, world_size=4), 2) for r in range(4)]
    assert all(len(make(rank=r, world_size=4)) == len(make()) for r in range(4))  # same plan length everywhere
    for k, (x, y) in enumerate(whole):
        # Concatenated in rank order, the ranks' batch k is the global batch k, augmentation included.
        torch.testing.assert_close(torch.cat([s[k][0] for s in shards]), x, rtol=0, atol=0)
        torch.testing.assert_close(torch.cat([s[k][1] for s in shards]), y, rtol=0, atol=0)
        for r in range(4):
            torch.testing.assert_close(shards[r][k][1], y[r * 4:(r + 1) * 4], rtol=0, atol=0)
    if not drop_last:  # the partial last batch of 2 rows: rank 0 gets both rows, the others none
        assert [len(s[-1][1]) for s in shards] == [2, 0, 0, 0]


def test_a_rank_resumes_at_any_batch_with_its_own_slices():
    ds = toy_dataset(count=64)
    make = lambda: CpuLoader(ds, 8, shuffle=True, padding=2, flip=True, seed=4, drop_last=True,  # noqa: E731
                             rank=1, world_size=2)
    full = epoch_batches(make(), 5)
    tail = epoch_batches(make(), 5, start=3)
    assert all(len(y) == 4 for _, y in full) and len(tail) == len(full) - 3
    for (x, y), (x2, y2) in zip(full[3:], tail, strict=True):
        torch.testing.assert_close(x, x2, rtol=0, atol=0)
        torch.testing.assert_close(y, y2, rtol=0, atol=0)


def test_sharding_arguments_are_checked():
    ds = toy_dataset()
    with pytest.raises(ConfigError, match=r"'data.batch_size' = 10: expected a multiple of the world size 4"):
        CpuLoader(ds, 10, rank=0, world_size=4)
    with pytest.raises(ConfigError, match="rank 2: expected 0..1"):
        CpuLoader(ds, 8, rank=2, world_size=2)
    with pytest.raises(ConfigError, match="world size 0"):
        CpuLoader(ds, 8, rank=0, world_size=0)
