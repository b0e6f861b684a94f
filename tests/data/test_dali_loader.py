"""DALI pipelines on the CPU (device_id=None): CpuLoader's batches, shards, exact resume, last-batch
policy, and the file-reader pipeline over a small image folder written here."""

import numpy as np
import pytest
import torch

pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed (pip install nvidia-dali-cuda130, "
                                          "the 'dali' extra)")
from PIL import Image  # noqa: E402

from generalist_trainer.trainer.data import ArrayDataset, CpuLoader, DaliFolderLoader, DaliLoader  # noqa: E402
from generalist_trainer.trainer.data.dali_loader import image_folder_files  # noqa: E402
from generalist_trainer.trainer.errors import ConfigError, DatasetError  # noqa: E402

from .loader_batches import assert_same_batches, toy_dataset


def _epoch(loader, epoch, start=0):
    # Kept without copying: batches must stay valid while the pipeline prefetches the next ones.
    return list(loader.batches(epoch, start=start))


def _assert_same_batches(got, expected):
    assert all(x.device == x2.device == torch.device("cpu") for (x, _), (x2, _) in zip(got, expected))
    assert_same_batches(got, expected)


@pytest.mark.parametrize("shuffle,padding,flip,drop_last", [
    (True, 2, True, True), (True, 2, True, False), (False, 0, False, False), (True, 3, False, True),
])
def test_array_pipeline_yields_the_cpu_loaders_batches(shuffle, padding, flip, drop_last):
    ds = toy_dataset()
    kwargs = dict(shuffle=shuffle, padding=padding, flip=flip, seed=3, drop_last=drop_last)
    cpu, dali = CpuLoader(ds, 16, **kwargs), DaliLoader(ds, 16, device="cpu", num_threads=1, **kwargs)
    assert dali.device_id is None  # the CPU-only pipeline
    assert len(dali) == len(cpu)
    for epoch in (0, 2):
        _assert_same_batches(_epoch(dali, epoch), _epoch(cpu, epoch))


def test_last_batch_policy_drop_or_partial():
    ds = toy_dataset()  # 50 points, batch 16
    dropped = DaliLoader(ds, 16, device="cpu", drop_last=True)
    kept = DaliLoader(ds, 16, device="cpu", drop_last=False)
    assert dropped.policy == dropped.dali.LastBatchPolicy.DROP
    assert kept.policy == kept.dali.LastBatchPolicy.PARTIAL
    assert [len(y) for _, y in _epoch(dropped, 0)] == [16, 16, 16]
    assert [len(y) for _, y in _epoch(kept, 0)] == [16, 16, 16, 2]


def test_resume_from_any_batch_equals_the_tail_of_a_full_pass():
    ds = toy_dataset()
    loader = DaliLoader(ds, 8, device="cpu", shuffle=True, padding=2, flip=True, seed=5, drop_last=True)
    full = _epoch(loader, 3)
    for start in (1, 4, len(full)):
        _assert_same_batches(_epoch(loader, 3, start=start), full[start:])


@pytest.mark.parametrize("world_size", [2, 4])
def test_rank_shards_concatenate_to_the_global_batch(world_size):
    ds = toy_dataset()
    kwargs = dict(shuffle=True, padding=2, flip=True, seed=1, drop_last=True)
    whole = _epoch(DaliLoader(ds, 8, device="cpu", **kwargs), 1)
    per_rank = [_epoch(DaliLoader(ds, 8, device="cpu", rank=r, world_size=world_size, **kwargs), 1)
                for r in range(world_size)]
    assert all(len(b) == len(whole) == 6 for b in per_rank)
    for k, (x, y) in enumerate(whole):
        assert all(len(b[k][1]) == 8 // world_size for b in per_rank)
        torch.testing.assert_close(torch.cat([b[k][0] for b in per_rank]), x, rtol=0, atol=0)
        torch.testing.assert_close(torch.cat([b[k][1] for b in per_rank]), y, rtol=0, atol=0)


def test_a_shard_that_would_be_empty_is_refused():
    ds = toy_dataset()  # 50 points, batch 8: 2 left over, none for ranks 1..3 of 4
    with pytest.raises(ConfigError, match="last global batch has 2 of 8 images.*drop_last=True"):
        DaliLoader(ds, 8, device="cpu", rank=0, world_size=4, drop_last=False)
    # 2 left over over 2 ranks of 4 rows each: rank 1 would also get none.
    with pytest.raises(ConfigError, match="2 of 8"):
        DaliLoader(ds, 8, device="cpu", world_size=2, drop_last=False)
    DaliLoader(ds, 8, device="cpu", world_size=4, drop_last=True)


def test_seeds_and_epochs_change_the_batches():
    ds = toy_dataset()
    make = lambda seed: DaliLoader(ds, 8, device="cpu", shuffle=True, padding=2, flip=True, seed=seed)  # noqa: E731
    first = _epoch(make(5), 3)[0]
    assert not torch.equal(first[1], _epoch(make(6), 3)[0][1])
    assert not torch.equal(first[1], _epoch(make(5), 4)[0][1])


def _write_folder(root, images, fmt="png", classes=3):
    """root/class_<c>/img_<i>.<fmt>; returns the images and labels in image_folder_files' order."""
    for i, image in enumerate(images):
        folder = root / f"class_{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"img_{i:03d}.{fmt}", quality=95)
    order = sorted(range(len(images)), key=lambda i: (i % classes, i))
    return images[order], np.array([i % classes for i in order], dtype=np.int64)


def test_image_folder_listing(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (7, 6, 6, 3), dtype=np.uint8)
    _write_folder(tmp_path, images, classes=2)
    (tmp_path / "class_0" / "notes.txt").write_text("not an image")
    files, labels, classes = image_folder_files(tmp_path)
    assert classes == ["class_0", "class_1"] and len(files) == 7
    assert labels.tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert all(f.endswith(".png") for f in files) and files == sorted(files)
    with pytest.raises(DatasetError, match="no such folder"):
        image_folder_files(tmp_path / "missing")
    (tmp_path / "empty" / "class_a").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no image files"):
        image_folder_files(tmp_path / "empty")


def test_png_folder_pipeline_decodes_and_augments_like_the_cpu_loader(tmp_path):
    images = np.random.default_rng(2).integers(0, 256, (22, 8, 8, 3), dtype=np.uint8)
    ordered, labels = _write_folder(tmp_path, images)
    # The same points as an in-memory dataset, in the folder's order: PNG is lossless, so the
    # decoded, augmented batches must equal CpuLoader's exactly.
    ds = ArrayDataset(ordered, labels, 3, "folder", (0.5,) * 3, (0.25,) * 3)
    for kwargs in (dict(shuffle=False, padding=0, flip=False, drop_last=False),
                   dict(shuffle=True, padding=2, flip=True, drop_last=True),
                   dict(shuffle=True, padding=1, flip=True, drop_last=False)):
        folder = DaliFolderLoader(tmp_path, 4, image_size=8, device="cpu", seed=4, num_threads=1, **kwargs)
        cpu = CpuLoader(ds, 4, seed=4, **kwargs)
        assert len(folder) == len(cpu) and folder.num_classes == 3
        full = _epoch(folder, 1)
        _assert_same_batches(full, _epoch(cpu, 1))
        _assert_same_batches(_epoch(folder, 1, start=3), full[3:])


def test_folder_pipeline_shards_concatenate_to_the_global_batch(tmp_path):
    images = np.random.default_rng(3).integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    _write_folder(tmp_path, images)
    kwargs = dict(shuffle=True, padding=2, flip=True, seed=9, drop_last=True)
    whole = _epoch(DaliFolderLoader(tmp_path, 8, image_size=8, device="cpu", **kwargs), 0)
    per_rank = [_epoch(DaliFolderLoader(tmp_path, 8, image_size=8, device="cpu", rank=r, world_size=2, **kwargs), 0)
                for r in range(2)]
    assert len(whole) == 2 and all(len(b) == 2 for b in per_rank)
    for k, (x, y) in enumerate(whole):
        torch.testing.assert_close(torch.cat([b[k][0] for b in per_rank]), x, rtol=0, atol=0)
        torch.testing.assert_close(torch.cat([b[k][1] for b in per_rank]), y, rtol=0, atol=0)


def test_jpeg_folder_pipeline_decodes_like_pil_and_resizes(tmp_path):
    images = np.random.default_rng(4).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    _, labels = _write_folder(tmp_path, images, fmt="jpg", classes=2)
    files, _, _ = image_folder_files(tmp_path)
    decoded = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    (x, y), = _epoch(DaliFolderLoader(tmp_path, 6, image_size=16, device="cpu"), 0)
    assert x.shape == (6, 3, 16, 16) and y.tolist() == labels.tolist()
    # JPEG decoders may round their inverse DCT and chroma upsampling differently: allow one level.
    reference = torch.from_numpy(decoded).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(x, reference, rtol=0, atol=1.01 / 255)
    # Another image size is reached by resampling.
    (small, _), = _epoch(DaliFolderLoader(tmp_path, 6, image_size=8, device="cpu", padding=1, flip=True), 0)
    assert small.shape == (6, 3, 8, 8) and 0.0 <= small.min() and small.max() <= 1.0


# ---------------------------------------------------------------------------------------------------
# The same pipelines on a GPU (device_id set): images go to the device after the source, augmentation runs
# there. The division by 255 on the device may round differently from the host's: one fp32 rounding at most.

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
_ONE_ROUNDING = dict(rtol=torch.finfo(torch.float32).eps, atol=0)


def _on_cuda_equal_to(got, expected):
    assert len(got) == len(expected)
    for k, ((x, y), (x2, y2)) in enumerate(zip(got, expected)):
        assert x.is_cuda and y.is_cuda and x.dtype == torch.float32 and y.dtype == torch.int64, f"batch {k}"
        torch.testing.assert_close(x.cpu(), x2, **_ONE_ROUNDING, msg=f"images of batch {k} differ")
        torch.testing.assert_close(y.cpu(), y2, rtol=0, atol=0, msg=f"labels of batch {k} differ")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("drop_last,world_size", [(True, 1), (False, 1), (True, 2)])
def test_gpu_array_pipeline_yields_the_cpu_loaders_batches_per_rank(drop_last, world_size):
    ds = toy_dataset()  # 50 points, batch 16: a last batch of 2 that DROP drops and PARTIAL keeps
    kwargs = dict(shuffle=True, padding=2, flip=True, seed=3, drop_last=drop_last)
    cpu = _epoch(CpuLoader(ds, 16, **kwargs), 1)
    for rank in range(world_size):
        dali = DaliLoader(ds, 16, device="cuda", rank=rank, world_size=world_size, **kwargs)
        assert dali.device_id == torch.cuda.current_device()
        assert dali.policy == (dali.dali.LastBatchPolicy.DROP if drop_last else dali.dali.LastBatchPolicy.PARTIAL)
        rows = slice(rank * 16 // world_size, (rank + 1) * 16 // world_size)
        _on_cuda_equal_to(_epoch(dali, 1), [(x[rows], y[rows]) for x, y in cpu])
        _on_cuda_equal_to(_epoch(dali, 1, start=2), [(x[rows], y[rows]) for x, y in cpu[2:]])


@pytest.mark.gpu
@needs_cuda
def test_gpu_png_folder_pipeline_decodes_with_the_mixed_decoder_like_the_cpu_loader(tmp_path):
    images = np.random.default_rng(2).integers(0, 256, (22, 8, 8, 3), dtype=np.uint8)
    ordered, labels = _write_folder(tmp_path, images)
    ds = ArrayDataset(ordered, labels, 3, "folder", (0.5,) * 3, (0.25,) * 3)
    kwargs = dict(shuffle=True, padding=1, flip=True, drop_last=False)
    folder = DaliFolderLoader(tmp_path, 4, image_size=8, device="cuda", seed=4, **kwargs)
    _on_cuda_equal_to(_epoch(folder, 1), _epoch(CpuLoader(ds, 4, seed=4, **kwargs), 1))


@pytest.mark.gpu
@needs_cuda
def test_gpu_loader_choice_builds_the_gpu_pipeline():
    from generalist_trainer.trainer.config import DataConfig
    from generalist_trainer.trainer.data import build_train_loader

    ds = toy_dataset(count=48)
    loader = build_train_loader(DataConfig(loader="dali", batch_size=16), ds, device="cuda", seed=0, padding=2,
                                flip=True)
    assert isinstance(loader, DaliLoader) and loader.device_id is not None
    x, y = next(iter(loader.batches(0)))
    assert x.is_cuda and x.shape == (16, 3, 8, 8) and y.is_cuda

