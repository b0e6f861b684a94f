"""Run under `torchrun --nproc_per_node=2 -m tests.eval.evaluate_any_worker FOLDER`: the public `gt.evaluate` on
a plain nn.Sequential, the ranks sharing the points; each rank saves what it returned to FOLDER/rank<r>.pt."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

import generalist_trainer as gt
from tests.eval.aa_shard_worker import EPS, install_short_attacks, tiny_problem

# The settings of the single-process reference in tests/eval/test_evaluate_any_model.py.
SETTINGS = {"eps": EPS, "attacks": ("clean", "pgd", "autoattack"), "batch_size": 4, "pgd_steps": 2,
            "progress": False}


def main(folder: Path) -> None:
    torch.set_num_threads(1)
    install_short_attacks()
    model, x, y = tiny_problem()
    result = gt.evaluate(model, x, y, state_file=folder / "state.json", **SETTINGS)
    torch.save({"result": result, "world": dist.get_world_size()}, folder / f"rank{dist.get_rank()}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
