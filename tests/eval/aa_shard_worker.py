"""Runs in each spawned process of the sharded AutoAttack test (a module, so spawn can import it)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from generalist_trainer.trainer.eval import autoattack_adapter, autoattack_resumable

EPS = 0.05
BATCH = 4
SETTINGS = {"eps": EPS, "norm": "linf", "version": "standard", "seed": 0, "batch_size": BATCH}


def shorten(adversary):
    """Fewer iterations: the schedule, not the attack strength, is under test."""
    adversary.apgd.n_iter = adversary.apgd_targeted.n_iter = 10
    adversary.apgd_targeted.n_target_classes = 3
    adversary.fab.n_iter, adversary.fab.n_target_classes = 10, 3
    adversary.square.n_queries = 100
    return adversary


def install_short_attacks() -> None:
    real_build = autoattack_adapter.build_autoattack

    def build_short(*args, **kwargs):
        return shorten(real_build(*args, **kwargs))

    autoattack_adapter.build_autoattack = build_short
    autoattack_resumable.build_autoattack = build_short


def tiny_problem(n: int = 20):
    """A fixed linear classifier on 6x6 images with labels it mostly gets right, so several units survive."""
    gen = torch.Generator().manual_seed(7)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 10)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(10, 36, generator=gen))
        model[1].bias.zero_()
    x = torch.rand(n, 1, 6, 6, generator=gen)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:3] = (y[:3] + 1) % 10  # a few wrong from the start: they must never be attacked
    return model, x, y


def sharded_run(rank: int, world: int, folder: str) -> None:
    torch.set_num_threads(1)
    install_short_attacks()
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world)
    try:
        model, x, y = tiny_problem()
        result = autoattack_resumable.autoattack_robust(model, x, y, state_path=Path(folder) / "state.json",
                                                        **SETTINGS)
        torch.save({"robust": result.robust, "stages": result.stage_accuracy}, Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


class Stop(Exception):
    """Stands for the process being killed at that point."""


def sharded_interrupted_run(rank: int, world: int, folder: str, phase: str) -> None:
    """phase 'stop': both ranks die after APGD-CE's merge, rank 1 before it saved the merged state (so its
    state file is one attack behind rank 0's), rank 0 in its first APGD-T unit. phase 'resume': both restart
    from their state files and write their flags."""
    torch.set_num_threads(1)
    install_short_attacks()
    dist.init_process_group("gloo", init_method=f"file://{folder}/store_{phase}", rank=rank, world_size=world)
    real_unit, real_save = autoattack_resumable._attack_unit, autoattack_resumable.save_state
    attacked: list[str] = []  # the attack of every unit this process runs

    def unit(adversary, attack, x, y):
        if phase == "stop" and rank == 0 and attack == "apgd-t":
            dist.barrier()  # rank 1 has failed to save the merge: now both stop
            raise Stop
        attacked.append(attack)
        return real_unit(adversary, attack, x, y)

    def save(path, state):
        if phase == "stop" and rank == 1 and state.attack_index == 1:
            dist.barrier()  # wait until rank 0 has saved the merge and started APGD-T
            raise Stop  # merged, but the merge never reached this rank's state file
        real_save(path, state)

    autoattack_resumable._attack_unit, autoattack_resumable.save_state = unit, save
    try:
        model, x, y = tiny_problem()
        result = autoattack_resumable.autoattack_robust(model, x, y, state_path=Path(folder) / "state.json",
                                                        **SETTINGS)
        torch.save({"robust": result.robust, "stages": result.stage_accuracy, "attacked": attacked,
                    "resumed": result.resumed}, Path(folder) / f"resumed_rank{rank}.pt")
    finally:
        autoattack_resumable._attack_unit, autoattack_resumable.save_state = real_unit, real_save
        dist.destroy_process_group()
