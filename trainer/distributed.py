"""Multi-process data-parallel training under `torchrun`: process group, rank-0 duties, replica checks.

One process per device. `torchrun` tells each process who it is through RANK, WORLD_SIZE and
LOCAL_RANK; without them (or with WORLD_SIZE=1) every helper here is a no-op and the run is the
ordinary single-process one.

What the training loop relies on (the reasons are in the functions' docstrings):
- `data.batch_size` is the GLOBAL batch; rank r trains on the contiguous slice [r B/W, (r+1) B/W) of
  every global batch (the loaders' `rank` / `world_size` keywords).
- The networks trained by gradient are wrapped in DistributedDataParallel for their training forward
  and backward only (`data_parallel`); attacks run on the plain module.
- Gradients are averaged by DDP, so every replica applies the same update; BatchNorm running
  statistics, which each rank updates from its own slice, are averaged after every step
  (`average_buffers_`). Every network is then identical on all ranks, which
  `assert_replicas_identical` checks with an exact fingerprint (and `record_replicas` at the end).
- Rank 0 alone writes files and prints; the others wait at a `barrier` where they read what it wrote.
"""

from __future__ import annotations

import atexit
import hashlib
import inspect
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from .config import PROCESS_GROUPS
from .errors import ConfigError, MissingDependencyError, TrainerError

# Written by rank 0 at the end of a distributed run: every rank's SHA-256 of every network.
REPLICAS_FILE = "replicas.json"
# Set to 1 to keep the standard output of ranks other than 0 (debugging).
ALL_RANKS_PRINT_ENV = "TRAINER_ALL_RANKS_PRINT"


class ReplicaDivergenceError(TrainerError, RuntimeError):
    """The copies of a network held by the ranks are no longer identical."""


@dataclass(frozen=True)
class LaunchEnv:
    """Who this process is, as torchrun describes it (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"environment variable {name} = {text!r}: expected an integer "
                          f"(set by torchrun)") from None


def launch_env() -> LaunchEnv:
    """RANK, WORLD_SIZE and LOCAL_RANK from the environment, checked."""
    env = LaunchEnv(_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0))
    if env.world_size < 1:
        raise ConfigError(f"environment variable WORLD_SIZE = {env.world_size}: expected an integer >= 1")
    if not 0 <= env.rank < env.world_size:
        raise ConfigError(f"environment variable RANK = {env.rank}: expected 0..{env.world_size - 1} "
                          f"(WORLD_SIZE = {env.world_size})")
    if env.local_rank < 0:
        raise ConfigError(f"environment variable LOCAL_RANK = {env.local_rank}: expected an integer >= 0")
    return env


def process_device(name: str, env: LaunchEnv) -> torch.device:
    """The device of this process in a distributed run: each process drives the GPU of its LOCAL_RANK.

    'auto' and 'cuda' map to cuda:LOCAL_RANK (the CPU for 'auto' without CUDA). An explicit 'cuda:N'
    would put several processes on one GPU, so it is accepted only where N is this process's LOCAL_RANK;
    choose the GPUs with CUDA_VISIBLE_DEVICES instead.
    """
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"config field 'train.device' = {name!r}: no CUDA device is available here")
    count = torch.cuda.device_count()
    if env.local_rank >= count:
        raise ConfigError(f"torchrun started process LOCAL_RANK = {env.local_rank} on this node but only {count} "
                          f"GPU(s) are visible: use --nproc_per_node={count} or fewer")
    device = torch.device("cuda", env.local_rank)
    if name not in ("auto", "cuda") and torch.device(name) != device:
        raise ConfigError(f"config field 'train.device' = {name!r}: under torchrun each process uses "
                          f"cuda:LOCAL_RANK (here cuda:{env.local_rank}); set train.device=auto or cuda and pick "
                          f"the GPUs with CUDA_VISIBLE_DEVICES")
    return device


def init_distributed(process_group: str, device: torch.device) -> LaunchEnv:
    """Join the process group of a torchrun launch (once per process; later calls only return the env).

    process_group 'auto': NCCL when the process's device is a GPU, gloo on the CPU.
    Also makes ranks other than 0 quiet on stdout (their prints would repeat rank 0's), unless
    TRAINER_ALL_RANKS_PRINT=1.
    """
    env = launch_env()
    if not env.distributed:
        return env
    if process_group not in PROCESS_GROUPS:
        raise ConfigError(f"config field 'train.process_group' = {process_group!r}: expected one of {PROCESS_GROUPS}")
    if not dist.is_available():
        raise MissingDependencyError("torchrun launched this process with WORLD_SIZE > 1 but this torch build has "
                                     "no torch.distributed support; install a torch build with it")
    if dist.is_initialized():
        if dist.get_world_size() != env.world_size:
            raise ConfigError(f"the process group has {dist.get_world_size()} processes but WORLD_SIZE is "
                              f"{env.world_size}")
        return env
    chosen = ("nccl" if device.type == "cuda" else "gloo") if process_group == "auto" else process_group
    if chosen == "nccl" and device.type != "cuda":
        raise ConfigError(f"config field 'train.process_group' = 'nccl': NCCL needs GPUs, the device is {device}; "
                          f"use gloo or auto")
    if chosen == "nccl" and not dist.is_nccl_available():
        raise MissingDependencyError("config field 'train.process_group' resolves to 'nccl' but this torch build "
                                     "has no NCCL; install a CUDA build of torch or set train.process_group=gloo")
    if device.type == "cuda":
        # Before the group exists: NCCL binds each rank's communicator to the current device.
        torch.cuda.set_device(device)
    kwargs = {"device_id": device} if chosen == "nccl" else {}
    dist.init_process_group(backend=chosen, **kwargs)
    atexit.register(_leave_process_group)
    if env.rank != 0 and os.environ.get(ALL_RANKS_PRINT_ENV) != "1":
        # Every rank runs the same code; one copy of the console output is the useful one. stderr is
        # kept, so a rank's warnings and tracebacks still show.
        sys.stdout = open(os.devnull, "w")  # kept open for the life of the process
    return env


def _leave_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# Who am I, and the collectives (all no-ops in a single process)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_rank0() -> bool:
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (e.g. until rank 0 has written a file the others read)."""
    if is_distributed():
        dist.barrier()


def _comm_device() -> torch.device:
    # NCCL moves only GPU tensors; gloo is used here for CPU tensors.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """The elementwise sum over ranks (a new tensor on `values`' device); `values` itself if not distributed."""
    return _all_reduce(values, dist.ReduceOp.SUM)


def all_reduce_max(values: torch.Tensor) -> torch.Tensor:
    """The elementwise maximum over ranks (a new tensor on `values`' device); `values` itself if not distributed."""
    return _all_reduce(values, dist.ReduceOp.MAX)


def all_reduce_min(values: torch.Tensor) -> torch.Tensor:
    """The elementwise minimum over ranks (a new tensor on `values`' device); `values` itself if not distributed."""
    return _all_reduce(values, dist.ReduceOp.MIN)


def _all_reduce(values: torch.Tensor, op) -> torch.Tensor:
    if not is_distributed():
        return values
    buf = values.detach().to(_comm_device(), copy=True)
    dist.all_reduce(buf, op=op)
    return buf.to(values.device)


def all_gather_rows(values: torch.Tensor) -> torch.Tensor:
    """Every rank's `values` (the same shape on each) concatenated along dim 0 in rank order, on `values`' device;
    `values` itself if not distributed."""
    if not is_distributed():
        return values
    buf = values.detach().to(_comm_device(), copy=True)
    parts = [torch.empty_like(buf) for _ in range(world_size())]
    dist.all_gather(parts, buf)
    return torch.cat(parts).to(values.device)


def broadcast(values: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Rank `src`'s `values` on every rank (a new tensor on `values`' device)."""
    if not is_distributed():
        return values
    buf = values.detach().to(_comm_device(), copy=True)
    dist.broadcast(buf, src=src)
    return buf.to(values.device)


def shard_bounds(count: int, shard_rank: int | None = None, shards: int | None = None) -> tuple[int, int]:
    """[start, stop) of rank r's contiguous share of `count` evaluation points: [r n / W, (r + 1) n / W)."""
    r = rank() if shard_rank is None else shard_rank
    w = world_size() if shards is None else shards
    return r * count // w, (r + 1) * count // w


def rank_rows_of_batch(batch: int, global_batch: int, dataset_size: int) -> tuple[int, int]:
    """(global index of this rank's first row, rows of the whole global batch) for batch `batch` (0-based) of an
    epoch: each rank loads `global_batch // world_size()` consecutive rows of every global batch (the loader's
    rank slice); a global batch is never longer than what is left of the dataset."""
    return rank() * (global_batch // world_size()), min(global_batch, dataset_size - batch * global_batch)


# ---------------------------------------------------------------------------------------------
# Data-parallel networks


def data_parallel(module: nn.Module, device: torch.device) -> nn.Module:
    """`module` wrapped in DistributedDataParallel for its training forward and backward.

    Use the wrapper only for the loss forward that is followed by backward(). Attacks call the plain
    module: they differentiate w.r.t. the input with torch.autograd.grad, which DDP's documentation
    does not support (its reducer is built around gradients accumulated into the parameters' .grad;
    in torch 2.13 an input-only autograd.grad happens to fire none of its hooks, but that is not a
    contract), and an attack needs no communication, so each of its forwards through the wrapper
    would only pay DDP's per-forward bookkeeping (ten forwards per PGD-10 step).

    Buffers are not broadcast from rank 0 at each forward (DDP's default): each rank normalises with
    the statistics of its own slice, and `average_buffers_` then averages the running statistics
    after the step, which uses every rank's data instead of discarding all but rank 0's.
    At construction DDP broadcasts rank 0's parameters (and buffers) in place, so a FlatArena's views
    stay valid.
    """
    kwargs: dict = {"device_ids": [device.index]} if device.type == "cuda" else {}
    if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters:
        kwargs["forward_sync_buffers"] = False  # torch >= 2.13: still syncs buffers once at construction
    else:
        kwargs["broadcast_buffers"] = False
    return nn.parallel.DistributedDataParallel(module, **kwargs)


@torch.no_grad()
def average_buffers_(*modules: nn.Module) -> None:
    """Average every floating-point buffer (BatchNorm running mean / var) over ranks, in place.

    Each rank updated its running statistics from its own slice. The running-mean update is linear,
    so from equal starting buffers the average is exactly the update a single process makes from the
    global batch mean; the averaged running variance misses the spread between the slices' means (a
    small bias that shrinks with the slice size). Integer buffers (num_batches_tracked) advance
    identically on every rank and are left alone. One all-reduce for all buffers of all modules.
    """
    if not is_distributed():
        return
    buffers = [b for m in modules for b in m.buffers() if b.is_floating_point()]
    if not buffers:
        return
    flat = torch.cat([b.reshape(-1).to(torch.float64) for b in buffers])
    flat = all_reduce_sum(flat) / world_size()
    offset = 0
    for b in buffers:
        b.copy_(flat[offset:offset + b.numel()].view_as(b))
        offset += b.numel()


# ---------------------------------------------------------------------------------------------
# Replica checks


def _state_tensors(module: nn.Module) -> list[torch.Tensor]:
    return [t.detach() for t in module.state_dict(keep_vars=True).values()]


@torch.no_grad()
def fingerprint(module: nn.Module) -> torch.Tensor:
    """(3,) int64 on the module's device: sums of the low and high 32-bit halves of every state value's
    float64 bit pattern, and the element count.

    Integer sums are exact and independent of the summation order, so two copies of a network give
    equal fingerprints on any hardware exactly when (but for astronomically unlikely cancellations)
    their parameters and buffers are bitwise equal. A float sum would not do: its rounding depends on
    the reduction order, which differs between GPU models.
    """
    tensors = _state_tensors(module)
    if not tensors:
        return torch.zeros(3, dtype=torch.int64)
    flat = torch.cat([t.reshape(-1).to(torch.float64) for t in tensors])  # exact for every float and int32
    bits = flat.view(torch.int64)
    low = (bits & 0xFFFFFFFF).sum()  # each < 2^32: exact for < 2^31 elements
    high = (bits >> 32).sum()
    return torch.stack([low, high, torch.tensor(flat.numel(), device=flat.device)])


def assert_replicas_identical(networks: Mapping[str, nn.Module], where: str) -> None:
    """Raise ReplicaDivergenceError on every rank unless each network is bitwise the same on all ranks."""
    if not is_distributed() or not networks:
        return
    local = torch.stack([fingerprint(m).to(_comm_device()) for m in networks.values()])  # (K, 3)
    gathered = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(gathered, local)
    differing = [name for k, name in enumerate(networks)
                 if any(not torch.equal(g[k], gathered[0][k]) for g in gathered[1:])]
    if differing:
        first = list(networks).index(differing[0])
        detail = "; ".join(f"rank {r}: {g[first].tolist()}" for r, g in enumerate(gathered))
        raise ReplicaDivergenceError(
            f"{where}: network(s) {differing} differ across the {world_size()} processes (fingerprints of "
            f"'{differing[0]}': {detail}). The ranks must apply identical updates; a rank-dependent random "
            f"draw or a buffer left unsynchronised breaks that")


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of a state_dict, in its order."""
    h = hashlib.sha256()
    for key, t in state.items():
        t = t.detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def record_replicas(path: Path, networks: Mapping[str, nn.Module], step: int) -> dict:
    """Every rank's digest of every network, written by rank 0 to `path`; raises if they differ.

    The file lets anyone verify after the fact that the ranks ended with one model (and the digest
    of a checkpoint's network, computed with `state_digest`, ties it to the saved weights).
    """
    local = {name: {"sha256": state_digest(m.state_dict()),
                    "float64_sum": float(sum(t.double().sum() for t in _state_tensors(m)))}
             for name, m in networks.items()}
    per_rank: list = [None] * world_size()
    if is_distributed():
        dist.all_gather_object(per_rank, local)
    else:
        per_rank[0] = local
    identical = all(all(p[n]["sha256"] == per_rank[0][n]["sha256"] for n in networks) for p in per_rank)
    record = {"world_size": world_size(), "process_group": dist.get_backend() if is_distributed() else None,
              "step": step, "identical": identical,
              "ranks": [{"rank": r, "networks": p} for r, p in enumerate(per_rank)]}
    if is_rank0():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(record, indent=2))
        os.replace(tmp, path)
    if not identical:
        raise ReplicaDivergenceError(f"step {step}: the ranks' networks differ at the end of training "
                                     f"(digests in {path})")
    return record
