"""What the torchrun tests launch on every rank: `python -m generalist_trainer` commands, run in one process group.

    torchrun --standalone --nproc_per_node=2 -m tests.distributed.worker [--no-batchnorm] \
        [--probe-divergence] CMD... [--then CMD...]

--no-batchnorm builds every network without its BatchNorm layers (see `batchnorm_free`), for the runs
compared with a single process. --probe-divergence first checks that `assert_replicas_identical` fails
on every rank when one rank's weights differ. Each CMD is a `python -m generalist_trainer` command line; they run
one after the other in the same processes (e.g. a stopped run, then its --resume).
"""

from __future__ import annotations

import sys

import torch
from torch import nn

import generalist_trainer.trainer.session as session_module
from generalist_trainer.trainer.cli import main
from generalist_trainer.trainer.distributed import (
    ReplicaDivergenceError,
    assert_replicas_identical,
    init_distributed,
    rank,
)
from generalist_trainer.trainer.models import build_model


def without_batchnorm(module: nn.Module) -> nn.Module:
    """`module` with every BatchNorm layer replaced by the identity, in place."""
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, nn.Identity())
        else:
            without_batchnorm(child)
    return module


def batchnorm_free(*args, **kwargs) -> nn.Module:
    """`build_model` without BatchNorm. BatchNorm in train mode normalises each rank's slice by that slice's
    own statistics, so N processes and one process on the same global batch legitimately differ; without
    it, data-parallel training must reproduce the single-process run up to floating-point rounding."""
    return without_batchnorm(build_model(*args, **kwargs))


def probe_divergence() -> None:
    init_distributed("gloo", torch.device("cpu"))
    torch.manual_seed(0)
    net = nn.Linear(3, 2)
    assert_replicas_identical({"net": net}, "probe (identical)")
    if rank() == 1:
        with torch.no_grad():
            net.weight[0, 0] = torch.nextafter(net.weight[0, 0], torch.tensor(2.0))  # one ulp on one rank
    try:
        assert_replicas_identical({"net": net}, "probe (one ulp apart)")
    except ReplicaDivergenceError as exc:
        print(f"rank {rank()}: divergence detected: {exc}", file=sys.stderr)
    else:
        raise AssertionError("a one-ulp difference between the ranks went unnoticed")


def run(argv: list[str]) -> int:
    if "--no-batchnorm" in argv:
        argv = [a for a in argv if a != "--no-batchnorm"]
        session_module.build_model = batchnorm_free
    if "--probe-divergence" in argv:
        argv = [a for a in argv if a != "--probe-divergence"]
        probe_divergence()
    commands: list[list[str]] = [[]]
    for arg in argv:
        if arg == "--then":
            commands.append([])
        else:
            commands[-1].append(arg)
    for command in commands:
        code = main(command)
        if code != 0:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
