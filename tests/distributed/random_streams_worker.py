"""Run under `torchrun --nproc_per_node=2 -m tests.distributed.random_streams_worker`: per-rank random streams.

Each rank holds the same global batch and takes its contiguous slice, as the loaders give it. Checked on every
rank, raising (a non-zero exit) on a failure:
- random starts (PGD Linf, PGD L2, the TRADES KL attack's Gaussian start) drawn with the rank's sample window
  differ between the ranks and, gathered, equal one process's starts on the global batch bit for bit;
- dropout in a method's training forward under data parallelism draws a different mask on each rank, while the
  global generators (which the next attack's seed comes from, and which rank 0 checkpoints) stay equal on all.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from torch import nn

from generalist_trainer.trainer.attacks import PGD, TradesKL
from generalist_trainer.trainer.distributed import init_distributed, rank, world_size

GLOBAL_BATCH = 8


def gathered(t: torch.Tensor) -> list[torch.Tensor]:
    parts = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(parts, t.contiguous())
    return parts


def check_random_starts() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 5 * 5, 4))
    x = torch.rand(GLOBAL_BATCH, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    y = torch.arange(GLOBAL_BATCH) % 4
    share = GLOBAL_BATCH // world_size()
    rows = slice(rank() * share, (rank() + 1) * share)
    attacks = {"pgd_linf": lambda: PGD(0.1, 0.05, 0), "pgd_l2": lambda: PGD(0.5, 0.2, 0, norm="l2"),
               "trades_kl": lambda: TradesKL(0.1, 0.05, 0)}
    for name, make in attacks.items():
        whole_attack, slice_attack = make(), make()
        slice_attack.set_sample_window(rank() * share, GLOBAL_BATCH)
        torch.manual_seed(7)  # the same seed draw on every rank, as the shared global generator gives it
        whole = whole_attack(model, x, y)
        torch.manual_seed(7)
        mine = slice_attack(model, x[rows], y[rows])
        parts = gathered(mine)
        assert torch.equal(torch.cat(parts), whole), f"{name}: the ranks' starts are not one process's"
        assert not torch.equal(parts[0] - x[:share], parts[1] - x[share:2 * share]), f"{name}: ranks repeat noise"


def check_dropout() -> None:
    from tests.engine.helpers import tiny_method

    m = tiny_method("model.dropout=0.5", method="pgd_at", seed=0)
    m.enable_data_parallel()
    x = torch.rand(4, 1, 12, 12, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(3)
    m.model.train()
    out = m.train_model(x)  # the same input on both ranks: only the dropout masks can differ
    parts = gathered(out.detach())
    assert not torch.equal(parts[0], parts[1]), "dropout drew the same masks on both ranks"
    state = torch.get_rng_state()
    states = gathered(state)
    assert all(torch.equal(s, states[0]) for s in states), "the global generator diverged between the ranks"
    assert torch.equal(state, torch.manual_seed(3).get_state()), "the training forward moved the global generator"
    # A second forward in the same step draws other masks (the call within the step is part of the seed).
    second = m.train_model(x).detach()
    assert not torch.equal(second, out.detach()), "two forwards of one step drew the same masks"


def main() -> int:
    init_distributed("gloo", torch.device("cpu"))
    if world_size() != 2:
        raise SystemExit(f"expected 2 processes, got {world_size()}")
    check_random_starts()
    check_dropout()
    print(f"rank {rank()}: per-rank random streams ok", file=sys.stderr)
    # Both ranks past their last collective before either tears gloo down: without it a rank could leave while
    # its peer's gloo thread still read from the socket, and that peer aborted at exit ("terminate called
    # without an active exception", exit -6) after its checks had passed.
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
