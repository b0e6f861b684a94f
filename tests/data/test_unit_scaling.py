"""uint8 -> [0, 1]: the gpu and torch loaders scale through a 256-entry table equal to the CPU's exact division."""

import numpy as np
import pytest
import torch

import generalist_trainer.trainer.data.gpu_loader as gpu_loader
from generalist_trainer.trainer.data.dataset import ArrayDataset
from generalist_trainer.trainer.data.gpu_loader import GpuLoader, bytes_to_unit, unit_table
from generalist_trainer.trainer.data.torch_loader import TorchLoader


def _every_byte_dataset() -> ArrayDataset:
    # 4 images of 8 x 8 x 1: the 256 byte values, each exactly once.
    images = np.arange(256, dtype=np.uint8).reshape(4, 8, 8, 1)
    return ArrayDataset(images, np.arange(4, dtype=np.int64) % 2, num_classes=2, name="bytes", mean=(0.5,), std=(0.25,))


def test_the_table_is_the_exact_division_and_not_the_reciprocal_product():
    table = unit_table("cpu")
    exact = torch.arange(256).to(torch.float32) / 255
    assert table.dtype == torch.float32 and torch.equal(table, exact)
    # The correctly rounded quotient: the double-precision one rounded once to fp32 (exact for these values).
    assert table.tolist() == torch.tensor([b / 255 for b in range(256)], dtype=torch.float64).float().tolist()
    # What CUDA computes for `x / 255.0` (x times fp32 1/255) differs for many byte values: the reason for a table.
    reciprocal = torch.arange(256).to(torch.float32) * torch.tensor(1 / 255, dtype=torch.float32)
    assert int((reciprocal != exact).sum()) > 100


def test_bytes_to_unit_keeps_shape_and_gives_a_contiguous_tensor_from_a_permuted_view():
    nhwc = torch.arange(256, dtype=torch.uint8).reshape(4, 8, 8, 1).expand(4, 8, 8, 3)
    out = bytes_to_unit(nhwc.permute(0, 3, 1, 2))
    assert out.shape == (4, 3, 8, 8) and out.is_contiguous() and out.dtype == torch.float32
    assert torch.equal(out, nhwc.permute(0, 3, 1, 2).float().div(255.0))


@pytest.mark.parametrize("loader_cls", [GpuLoader, TorchLoader])
def test_every_byte_value_comes_out_as_the_cpu_division(loader_cls):
    loader = loader_cls(_every_byte_dataset(), 4, device="cpu")
    (x, _), = list(loader.batches(0))
    assert torch.equal(x.flatten(), torch.arange(256).to(torch.float32) / 255)


@pytest.mark.parametrize("loader_cls", [GpuLoader, TorchLoader])
def test_the_loaders_scale_through_the_table(loader_cls, monkeypatch):
    """A table that is not b / 255 shows up in the batches: the loaders look values up rather than divide
    (a division would be exact on the CPU but not on CUDA)."""
    marked = torch.arange(256, dtype=torch.float32) * 2.0
    monkeypatch.setattr(gpu_loader, "_UNIT_TABLES", {torch.device("cpu"): marked})
    loader = loader_cls(_every_byte_dataset(), 4, device="cpu")
    (x, _), = list(loader.batches(0))
    assert torch.equal(x.flatten(), marked)
