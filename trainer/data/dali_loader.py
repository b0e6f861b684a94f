"""NVIDIA DALI pipelines that stream augmented batches: one over an in-memory `ArrayDataset`
(external source), one over an ImageFolder-style tree of image files (file reader + decoder).

Import-guarded: `nvidia.dali` is an optional extra (`pip install nvidia-dali-cuda130`, or the
project's `dali` extra); asking for a DALI loader without it raises MissingDependencyError.

Randomness: DALI's own random operators draw from per-pipeline streams that a resumed run could
only reproduce by replaying every batch before the resume point. Instead, every crop corner and
flip is drawn on the host by `CpuLoader`'s epoch plan (a function of (seed, epoch) alone, see
`batch_layout`) and fed to the pipeline next to the images; DALI applies them (fn.slice with
out-of-bounds zero padding at those anchors, fn.flip, the [0, 1] float NCHW conversion). So
`batches(epoch, start=k)` builds the epoch's plan afresh and starts feeding at batch k, which is
exactly the tail of a full pass, and the array pipeline yields `CpuLoader`'s batches bit for bit on
the CPU.

Devices: without CUDA the pipelines run on the CPU (`device_id=None`), which is what CI exercises;
with a CUDA `device` the images go to the GPU right after the source (the files through the
"mixed" decoder) and every augmentation op runs there.

Last-batch policy: `drop_last=True` (training) is `LastBatchPolicy.DROP`, the partial last global
batch is never fed; `drop_last=False` is `LastBatchPolicy.PARTIAL`, it comes out short.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, DatasetError, MissingDependencyError
from .batch_layout import BatchLayout, EpochPlanner, planned_batch_indices
from .cpu_loader import EpochPlan
from .dataset import ArrayDataset

DALI_INSTALL_HINT = "pip install nvidia-dali-cuda130 (or the project's 'dali' extra: pip install -e '.[dali]')"
# Extensions of the files the folder reader lists (those DALI's image decoder handles).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".webp")
_READER_NAME = "files"


@dataclass(frozen=True)
class Dali:
    """The parts of DALI the pipelines use, imported on demand."""

    fn: ModuleType
    types: ModuleType
    Pipeline: Any
    DALIGenericIterator: Any
    LastBatchPolicy: Any


def dali_available() -> bool:
    try:
        import_dali()
    except MissingDependencyError:
        return False
    return True


def import_dali() -> Dali:
    """DALI's modules, or MissingDependencyError saying what to install."""
    try:
        dali = importlib.import_module("nvidia.dali")
        plugin = importlib.import_module("nvidia.dali.plugin.pytorch")
    except ImportError as exc:
        raise MissingDependencyError(f"the DALI loader (data.loader = 'dali') needs NVIDIA DALI, which "
                                     f"cannot be imported ({exc}): {DALI_INSTALL_HINT}") from None
    return Dali(dali.fn, dali.types, dali.Pipeline, plugin.DALIGenericIterator, plugin.LastBatchPolicy)


def last_batch_policy(dali: Dali, drop_last: bool) -> Any:
    """DROP when the partial last batch is dropped (training), else PARTIAL (a short last batch)."""
    return dali.LastBatchPolicy.DROP if drop_last else dali.LastBatchPolicy.PARTIAL


def dali_device_id(device: torch.device) -> int | None:
    """None (a CPU-only pipeline) unless `device` is a CUDA device, else its index."""
    if device.type != "cuda":
        return None
    return device.index if device.index is not None else torch.cuda.current_device()


def check_no_empty_shard(layout: BatchLayout) -> None:
    """DALI cannot yield an empty batch, which a rank's share of a short last global batch can be."""
    rest = layout.count % layout.batch_size
    if layout.drop_last or rest == 0 or rest > (layout.world_size - 1) * layout.local_batch_size:
        return
    raise ConfigError(f"the last global batch has {rest} of {layout.batch_size} images, which leaves the last "
                      f"ranks of {layout.world_size} with none and DALI cannot yield an empty batch; "
                      "use drop_last=True (training always does) or a batch size that divides the dataset")


def augment_to_float(dali: Dali, images: Any, anchors: Any, flips: Any, *, height: int, width: int,
                     augment: bool) -> Any:
    """DALI graph: (H, W, C) uint8 images -> crop at `anchors`, mirror where `flips` -> (C, H, W) float32 in [0, 1].

    anchors: per-sample int32 (2,) crop corners (row, col) relative to the UNPADDED image, so in
    [-padding, padding]; rows and columns outside the image read as zero, which is the zero padding.
    flips: per-sample int32 scalar, 1 to mirror horizontally.
    """
    fn, types = dali.fn, dali.types
    if augment:
        images = fn.slice(images, start=anchors, shape=[height, width], axes=(0, 1),
                          out_of_bounds_policy="pad", fill_values=0)
        images = fn.flip(images, horizontal=flips)
    chw = fn.transpose(images, perm=[2, 0, 1])
    # A true division, not a multiplication by 1/255, so the values equal the other loaders' div_(255).
    return fn.cast(chw, dtype=types.FLOAT) / 255.0


def _anchors(plan: EpochPlan, positions: np.ndarray, padding: int) -> np.ndarray:
    """(n, 2) int32 crop corners relative to the unpadded image (the plan's are in the padded one)."""
    return (plan.offsets[positions] - padding).astype(np.int32)


def _shard_positions(layout: BatchLayout, start: int) -> list[np.ndarray]:
    """This rank's epoch positions of batches start, start + 1, ..., one array per batch."""
    return [np.arange(span.start, span.stop) for span in (layout.span(k) for k in range(start, len(layout)))]


def _to_batch(outputs: list[dict[str, torch.Tensor]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    (named,) = outputs  # one pipeline per iterator
    # Labels come out (B, 1) int32 from the file reader; the contract is (B,) int64 on the device.
    return named["x"], named["y"].reshape(-1).to(device=device, dtype=torch.int64)


class _DaliBatches:
    """What both DALI loaders share: the epoch plan over `items`, this rank's shard, the last-batch policy."""

    name = "dali"

    def _plan_batches(self, items, batch_size: int, *, device: torch.device | str, shuffle: bool, padding: int,
                      flip: bool, seed: int, drop_last: bool, rank: int, world_size: int, num_threads: int,
                      prefetch_queue_depth: int) -> None:
        self.layout = BatchLayout(len(items), batch_size, drop_last, rank, world_size)
        check_no_empty_shard(self.layout)
        self._planner = EpochPlanner(items, shuffle=shuffle, padding=padding, flip=flip, seed=seed)
        self.device = torch.device(device)
        self.device_id = dali_device_id(self.device)
        self.padding = padding
        self.augment = padding > 0 or flip
        self.num_threads = num_threads
        self.prefetch_queue_depth = prefetch_queue_depth
        self.policy = last_batch_policy(self.dali, drop_last)

    def __len__(self) -> int:
        """Batches per epoch."""
        return len(self.layout)

    def batch_indices(self, epoch: int, start: int = 0) -> Iterator[torch.Tensor]:
        """(b,) int64 on the device: the dataset indices of the rows of batches start, start + 1, ... of `epoch`."""
        return planned_batch_indices(self._planner, self.layout, epoch, start, self.device)


class DaliLoader(_DaliBatches):
    """Batches (x, y) of an `ArrayDataset` through a DALI pipeline; see the module doc and `trainer.data.loaders`."""

    def __init__(self, dataset: ArrayDataset, batch_size: int, *, device: torch.device | str, shuffle: bool = False,
                 padding: int = 0, flip: bool = False, seed: int = 0, drop_last: bool = False, rank: int = 0,
                 world_size: int = 1, num_threads: int = 2, prefetch_queue_depth: int = 2) -> None:
        self.dali = import_dali()
        if num_threads < 1:
            raise ConfigError(f"DALI threads {num_threads!r}: expected an integer >= 1")
        self.dataset = dataset
        self._plan_batches(dataset, batch_size, device=device, shuffle=shuffle, padding=padding, flip=flip,
                           seed=seed, drop_last=drop_last, rank=rank, world_size=world_size,
                           num_threads=num_threads, prefetch_queue_depth=prefetch_queue_depth)

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches start, start + 1, ... of `epoch`, exactly as a full pass would yield them."""
        self.layout.check_start(start)
        plan = self._planner.plan(epoch)
        shard = _shard_positions(self.layout, start)
        if not shard:
            return iter(())
        pipe = self._pipeline(plan, shard)
        iterator = self.dali.DALIGenericIterator(pipe, ["x", "y"], size=-1, last_batch_policy=self.policy,
                                                 auto_reset=False)
        return (_to_batch(outputs, self.device) for outputs in iterator)

    def _feed(self, plan: EpochPlan, shard: list[np.ndarray]) -> Iterator[tuple[np.ndarray, ...]]:
        """One batch of host arrays per step: images (B, H, W, C) uint8, labels (B,), and when augmenting,
        anchors (B, 2) and flips (B,)."""
        for positions in shard:
            indices = plan.order[positions]
            batch = (self.dataset.images[indices], self.dataset.labels[indices])
            if self.augment:
                batch += (_anchors(plan, positions, self.padding), plan.flips[positions].astype(np.int32))
            yield batch

    def _pipeline(self, plan: EpochPlan, shard: list[np.ndarray]) -> Any:
        dali = self.dali
        _, height, width, _ = self.dataset.images.shape
        pipe = dali.Pipeline(batch_size=self.layout.local_batch_size, num_threads=self.num_threads,
                             device_id=self.device_id, prefetch_queue_depth=self.prefetch_queue_depth)
        with pipe:
            # A generator source: its StopIteration ends the epoch after the shard's last batch.
            outputs = 4 if self.augment else 2
            images, labels, *draws = dali.fn.external_source(
                source=self._feed(plan, shard), num_outputs=outputs, batch=True, layout=["HWC"] + [""] * (outputs - 1))
            anchors, flips = draws if self.augment else (None, None)
            if self.device_id is not None:
                images, labels = images.gpu(), labels.gpu()
            x = augment_to_float(dali, images, anchors, flips, height=height, width=width, augment=self.augment)
            pipe.set_outputs(x, labels)
        return pipe


def image_folder_files(root: str | Path) -> tuple[list[str], np.ndarray, list[str]]:
    """Files, labels (N,) int64 and class names of an ImageFolder-style tree root/<class>/<image>.

    Classes are the sorted sub-folder names and label i is the i-th class, as torchvision's
    ImageFolder numbers them; files are sorted within each class.
    """
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such folder; expected an image folder root/<class>/<image file>")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    files: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        found = sorted(p for p in (folder / name).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        files.extend(str(p) for p in found)
        labels.extend([label] * len(found))
    if not files:
        raise DatasetError(f"{folder}: no image files in class sub-folders (found {len(classes)} sub-folders); "
                           f"expected root/<class>/<image> with extensions {', '.join(IMAGE_EXTENSIONS)}")
    return files, np.asarray(labels, dtype=np.int64), classes


class DaliFolderLoader(_DaliBatches):
    """Batches (x, y) decoded from an image folder by DALI, resized to `image_size` squares, then augmented.

    Same contract, plan, sharding and last-batch policy as `DaliLoader`. The file reader is given this
    rank's files in the epoch plan's order, so DALI never shuffles or shards on its own.
    """

    def __init__(self, root: str | Path, batch_size: int, *, image_size: int, device: torch.device | str,
                 shuffle: bool = False, padding: int = 0, flip: bool = False, seed: int = 0, drop_last: bool = False,
                 rank: int = 0, world_size: int = 1, num_threads: int = 2, prefetch_queue_depth: int = 2) -> None:
        self.dali = import_dali()
        if image_size < 1:
            raise ConfigError(f"image size {image_size!r}: expected an integer >= 1")
        if num_threads < 1:
            raise ConfigError(f"DALI threads {num_threads!r}: expected an integer >= 1")
        self.files, self.labels, self.classes = image_folder_files(root)
        self.image_size = image_size
        self._plan_batches(self.files, batch_size, device=device, shuffle=shuffle, padding=padding, flip=flip,
                           seed=seed, drop_last=drop_last, rank=rank, world_size=world_size,
                           num_threads=num_threads, prefetch_queue_depth=prefetch_queue_depth)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches start, start + 1, ... of `epoch`, exactly as a full pass would yield them."""
        self.layout.check_start(start)
        plan = self._planner.plan(epoch)
        shard = _shard_positions(self.layout, start)
        if not shard:
            return iter(())
        positions = np.concatenate(shard)
        pipe = self._pipeline(plan, positions)
        # The reader knows the shard's size, so the iterator applies the policy to its padded last batch.
        iterator = self.dali.DALIGenericIterator(pipe, ["x", "y"], reader_name=_READER_NAME,
                                                 last_batch_policy=self.policy, auto_reset=False)
        return (_to_batch(outputs, self.device) for outputs in iterator)

    def _pipeline(self, plan: EpochPlan, positions: np.ndarray) -> Any:
        dali = self.dali
        fn, types = dali.fn, dali.types
        indices = plan.order[positions]
        anchors = _anchors(plan, positions, self.padding)
        flips = plan.flips[positions].astype(np.int32)
        last = len(positions) - 1

        def augmentation(sample_info: Any) -> tuple[np.ndarray, np.ndarray]:
            # Sample j of the reader's epoch is positions[j]; the reader repeats its last file to pad
            # the final batch (pad_last_batch), so the draws repeat with it.
            j = min(sample_info.idx_in_epoch, last)
            return anchors[j], flips[j]

        pipe = dali.Pipeline(batch_size=self.layout.local_batch_size, num_threads=self.num_threads,
                             device_id=self.device_id, prefetch_queue_depth=self.prefetch_queue_depth)
        with pipe:
            encoded, labels = fn.readers.file(files=[self.files[i] for i in indices],
                                              labels=[int(self.labels[i]) for i in indices],
                                              random_shuffle=False, pad_last_batch=True, name=_READER_NAME)
            decoder_device = "cpu" if self.device_id is None else "mixed"
            images = fn.decoders.image(encoded, device=decoder_device, output_type=types.RGB)
            # Identity for images already image_size x image_size; other sizes are resampled (antialiased).
            images = fn.resize(images, size=[self.image_size, self.image_size])
            if self.device_id is not None:
                labels = labels.gpu()
            sample_anchors, sample_flips = (fn.external_source(source=augmentation, num_outputs=2, batch=False)
                                            if self.augment else (None, None))
            x = augment_to_float(dali, images, sample_anchors, sample_flips, height=self.image_size,
                                 width=self.image_size, augment=self.augment)
            pipe.set_outputs(x, labels)
        return pipe
