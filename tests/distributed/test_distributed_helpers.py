"""trainer/distributed.py in one process: launch environment, devices, fingerprints, no-op collectives, and
every method's DDP plumbing on a one-process gloo group (which must not change a single bit)."""

import copy

import pytest
import torch
import torch.distributed as dist
from torch import nn

from generalist_trainer.trainer.config import load_config
from generalist_trainer.trainer.distributed import (
    LaunchEnv,
    all_reduce_min,
    all_reduce_sum,
    fingerprint,
    init_distributed,
    is_distributed,
    launch_env,
    process_device,
    shard_bounds,
    state_digest,
)
from generalist_trainer.trainer.errors import ConfigError
from generalist_trainer.trainer.runtime import resolve_device
from generalist_trainer.trainer.session import open_session


def test_launch_env_reads_and_checks_torchrun_variables(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert launch_env() == LaunchEnv(0, 1, 0) and not launch_env().distributed
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert launch_env() == LaunchEnv(3, 4, 1) and launch_env().distributed
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ConfigError, match="RANK = 4: expected 0..3"):
        launch_env()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ConfigError, match="RANK = 'x': expected an integer"):
        launch_env()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answers")
def test_each_process_gets_its_device(monkeypatch):
    env = LaunchEnv(1, 2, 1)
    assert process_device("cpu", env) == torch.device("cpu")
    assert process_device("auto", env) == torch.device("cpu")
    with pytest.raises(ConfigError, match="train.device"):
        process_device("cuda", env)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("auto") == torch.device("cpu")


def test_init_checks_the_process_group_before_joining(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(ConfigError, match="train.process_group' = 'mpi'"):
        init_distributed("mpi", torch.device("cpu"))
    with pytest.raises(ConfigError, match="NCCL needs GPUs"):
        init_distributed("nccl", torch.device("cpu"))
    assert not dist.is_initialized()
    with pytest.raises(ConfigError, match="train.process_group"):
        load_config(None, ["train.process_group=mpi"])


def test_single_process_collectives_are_identities():
    assert not is_distributed()
    assert init_distributed("auto", torch.device("cpu")) == launch_env()
    t = torch.tensor([1.5, 2.0])
    assert all_reduce_sum(t) is t
    assert all_reduce_min(t) is t
    assert shard_bounds(10) == (0, 10)
    shares = [shard_bounds(10, r, 3) for r in range(3)]
    assert shares == [(0, 3), (3, 6), (6, 10)]  # contiguous, disjoint, covering every point


def test_fingerprint_and_digest_see_a_one_ulp_change_and_nothing_else():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    twin = copy.deepcopy(net)
    assert torch.equal(fingerprint(net), fingerprint(twin))
    assert state_digest(net.state_dict()) == state_digest(twin.state_dict())
    with torch.no_grad():
        w = twin[2].weight
        w[1, 0] = torch.nextafter(w[1, 0], torch.tensor(10.0))
    assert not torch.equal(fingerprint(net), fingerprint(twin))
    assert state_digest(net.state_dict()) != state_digest(twin.state_dict())
    twin = copy.deepcopy(net)
    twin[1].num_batches_tracked += 1  # integer buffers count too
    assert not torch.equal(fingerprint(net), fingerprint(twin))


@pytest.fixture
def one_process_group():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


TINY = ["data.dataset=synthetic", "data.synthetic_shape=[1, 12, 12]", "data.synthetic_train_size=64",
        "data.synthetic_test_size=16", "data.val_size=0", "model.arch=small_cnn", "attack.eps=0.1",
        "attack.step=0.05", "attack.steps=2", "train.device=cpu"]


@pytest.mark.parametrize("method, extra", [
    ("natural", []), ("pgd_at", []), ("trades", []),
    ("generalist", ["method.generalist.sync_start=0.0"]),
    ("generalist", ["method.generalist.robust_objective=trades"]),
])
def test_ddp_wrapping_of_one_process_changes_nothing(one_process_group, method, extra):
    """The wrapped training forward / backward (attacks on the plain module) equals the plain step bit for bit."""
    cfg = load_config(None, [*TINY, f"method.name={method}", *extra])
    plain, wrapped = open_session(cfg).method, open_session(cfg).method
    wrapped.enable_data_parallel()
    assert wrapped.data_parallel and set(wrapped.networks()) == set(plain.networks())
    # What the training forward / backward goes through: every network trained by gradient (both experts
    # of Generalist) behind its own DDP wrapper.
    trained = ({"robust": wrapped.robust_train, "natural": wrapped.natural_train} if method == "generalist"
               else {"model": wrapped.train_model})
    for name, module in trained.items():
        assert isinstance(module, nn.parallel.DistributedDataParallel), f"{method}: {name} is not wrapped"
        assert module.module is wrapped.networks()[name], f"{method}: the wrapper of {name} holds another module"
    assert all(not isinstance(n, nn.parallel.DistributedDataParallel) for n in wrapped.networks().values())
    gen = torch.Generator().manual_seed(1)
    for step in range(2):
        x = torch.rand(8, 1, 12, 12, generator=gen)
        y = torch.randint(0, 10, (8,), generator=gen)
        for m in (plain, wrapped):
            m.start_epoch(1)
            torch.manual_seed(step)  # the same attack starts for both
            metrics = m.train_step(x, y)
        assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    for name, net in plain.networks().items():
        for key, value in net.state_dict().items():
            assert torch.equal(wrapped.networks()[name].state_dict()[key], value), f"{method}: {name}.{key}"
