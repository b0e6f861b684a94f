"""build_train_loader: the data.loader choice (auto's memory budget included), identical batches across
loaders, config validation, the --loader flag, and the error for DALI when it is missing."""

import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from generalist_trainer.trainer.cli import build_parser, main
from generalist_trainer.trainer.config import DataConfig, load_config
from generalist_trainer.trainer.data import (
    ArrayDataset,
    CpuLoader,
    GpuLoader,
    TorchLoader,
    build_train_loader,
    choose_loader,
)
from generalist_trainer.trainer.data import loaders as loaders_module
from generalist_trainer.trainer.data.dali_loader import dali_available
from generalist_trainer.trainer.errors import ConfigError, MissingDependencyError


def _dataset(count=40, side=8, channels=3):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (count, side, side, channels), dtype=np.uint8)
    return ArrayDataset(images, np.arange(count) % 10, 10, "toy", (0.5,) * channels, (0.25,) * channels)


def _build(loader, dataset, **kwargs):
    cfg = DataConfig(dataset="synthetic", batch_size=8, loader=loader, num_workers=0)
    return build_train_loader(cfg, dataset, device="cpu", seed=2, padding=2, flip=True, **kwargs)


def test_each_loader_yields_the_same_training_batches():
    ds = _dataset()
    names = ["cpu", "gpu", "torch"] + (["dali"] if dali_available() else [])
    loaders = {name: _build(name, ds) for name in names}
    assert isinstance(loaders["cpu"], CpuLoader) and isinstance(loaders["gpu"], GpuLoader)
    assert isinstance(loaders["torch"], TorchLoader)
    reference = list(loaders["cpu"].batches(1))
    assert len(reference) == 5 and all(len(y) == 8 for _, y in reference)  # shuffled, drop_last
    for name, loader in loaders.items():
        assert len(loader) == 5, name
        got = list(loader.batches(1, start=2))
        assert len(got) == 3, name
        for (x, y), (x2, y2) in zip(got, reference[2:]):
            torch.testing.assert_close(x, x2, rtol=0, atol=0, msg=f"{name} images differ from cpu")
            torch.testing.assert_close(y, y2, rtol=0, atol=0, msg=f"{name} labels differ from cpu")


@pytest.mark.parametrize("world_size", [2, 4])
def test_sharded_loaders_yield_the_cpu_loaders_rank_slices(world_size):
    ds = _dataset()
    names = ["gpu", "torch"] + (["dali"] if dali_available() else [])
    whole = list(_build("cpu", ds).batches(0))
    for rank in range(world_size):
        expected = list(_build("cpu", ds, rank=rank, world_size=world_size).batches(0))
        assert len(expected) == len(whole)
        for k, (x, y) in enumerate(expected):
            rows = slice(rank * 8 // world_size, (rank + 1) * 8 // world_size)
            torch.testing.assert_close(x, whole[k][0][rows], rtol=0, atol=0)
            torch.testing.assert_close(y, whole[k][1][rows], rtol=0, atol=0)
        for name in names:
            got = list(_build(name, ds, rank=rank, world_size=world_size).batches(0))
            assert len(got) == len(expected), name
            for k, ((x, y), (x2, y2)) in enumerate(zip(got, expected)):
                torch.testing.assert_close(x, x2, rtol=0, atol=0, msg=f"{name} rank {rank} batch {k}")
                torch.testing.assert_close(y, y2, rtol=0, atol=0, msg=f"{name} rank {rank} batch {k}")


def test_no_loader_draws_from_the_global_random_generators():
    # The training loop's PGD starts and dropout draw from torch's global generator; a loader that
    # consumed from it would make runs depend on the loader.
    ds = _dataset()
    numpy_state = np.random.get_state()
    with torch.random.fork_rng():
        for name in ["cpu", "gpu", "torch"] + (["dali"] if dali_available() else []):
            _check_leaves_global_generators_alone(name, ds)
    np.random.set_state(numpy_state)


def _check_leaves_global_generators_alone(name, ds):
    torch.manual_seed(0)
    np.random.seed(0)
    loader = _build(name, ds)
    for epoch in (0, 1):
        list(loader.batches(epoch))
    torch_draw, numpy_draw = torch.rand(4), np.random.rand(4)
    torch.manual_seed(0)
    np.random.seed(0)
    assert torch.equal(torch_draw, torch.rand(4)), f"{name} consumed torch's global generator"
    assert np.array_equal(numpy_draw, np.random.rand(4)), f"{name} consumed numpy's global generator"


def test_auto_picks_cpu_without_cuda():
    ds = _dataset()
    assert choose_loader("auto", ds, torch.device("cpu"))[0] == "cpu"
    assert isinstance(_build("auto", ds), CpuLoader)
    for name in ("cpu", "gpu", "dali", "torch"):
        assert choose_loader(name, ds, torch.device("cpu")) == (name, "data.loader")


def test_auto_on_cuda_keeps_the_dataset_resident_only_within_the_memory_budget(monkeypatch):
    ds = _dataset()  # 40 * 192 bytes of images + 40 * 8 of labels
    needed = loaders_module.dataset_bytes(ds)
    assert needed == 40 * 8 * 8 * 3 + 40 * 8
    cuda = torch.device("cuda", 0)
    for total, expected in ((4 * needed, "gpu"), (4 * needed - 4, "cpu")):
        properties = SimpleNamespace(total_memory=total)
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device, p=properties: p)
        loader, reason = choose_loader("auto", ds, cuda)
        assert loader == expected, reason
        assert reason.startswith("auto:")


def test_a_bad_loader_name_is_a_config_error():
    ds = _dataset()
    with pytest.raises(ConfigError, match=r"data.loader' = 'fast'.*'auto', 'cpu', 'gpu', 'dali', 'torch'"):
        choose_loader("fast", ds, torch.device("cpu"))
    with pytest.raises(ConfigError, match="data.loader' = 'fast'"):
        _build("fast", ds)
    with pytest.raises(ConfigError, match="data.loader' = 'fast'"):
        load_config(overrides=["data.loader=fast"])
    with pytest.raises(ConfigError, match="data.num_workers' = -1"):
        load_config(overrides=["data.num_workers=-1"])
    assert load_config(overrides=["data.loader=torch", "data.num_workers=0"]).data.loader == "torch"


def test_explicit_dali_without_the_package_names_what_to_install(monkeypatch):
    # None in sys.modules makes `import nvidia.dali` raise ImportError, as if it were not installed.
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)
    monkeypatch.setitem(sys.modules, "nvidia.dali.plugin.pytorch", None)
    assert not dali_available()
    with pytest.raises(MissingDependencyError, match=r"pip install nvidia-dali-cuda130.*'dali' extra"):
        _build("dali", _dataset())
    # auto never needs DALI.
    assert isinstance(_build("auto", _dataset()), CpuLoader)


def test_cli_flag_sets_the_loader(monkeypatch, tmp_path):
    import generalist_trainer.trainer.training as training_module

    seen = []
    monkeypatch.setattr(training_module, "train", lambda cfg, resume: seen.append(cfg) or SimpleNamespace(
        finished=False))
    # The CLI takes the run folder's lock (creating it) before it calls train: a folder of the test's own.
    assert main(["train", "--loader", "torch", "data.num_workers=0", "--no-eval",
                 f"train.out_dir={tmp_path / 'run'}"]) == 0
    assert seen[0].data.loader == "torch" and seen[0].data.num_workers == 0
    parser = build_parser()
    assert parser.parse_args(["train", "--loader", "gpu"]).loader == "gpu"
    assert parser.parse_args(["train"]).loader is None
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--loader", "fast"])
