"""What a training checkpoint holds (`last.pt`, `best.pt`) and how a run is put back from it, exactly.

A checkpoint is a plain dict: the config, every network and optimiser, where training continues (`position`),
the method's own state (schedules, objective state such as DUCAT's), every RNG, the best-checkpoint record
and the model's metadata (rebuilds the model without the dataset: trainer/model_loading.py).
"""

from __future__ import annotations

from pathlib import Path

from .best_checkpoint import BestCheckpoint
from .checkpoint import load_resume_state
from .config import to_dict
from .distributed import barrier
from .errors import CheckpointError
from .runtime import capture_rng_state, restore_rng_state
from .session import Session, load_networks


def training_state(session: Session, epoch: int, batch: int, best: BestCheckpoint) -> dict:
    """The checkpoint of `session` continuing at batch `batch` (0-based) of 1-based epoch `epoch`."""
    method = session.method
    return {
        "config": to_dict(session.cfg),
        "method": method.name,
        "networks": {k: v.state_dict() for k, v in method.networks().items()},
        "optimizers": {k: v.state_dict() for k, v in method.optimizers().items()},
        "position": {"epoch": epoch, "batch": batch, "global_step": method.global_step},
        "method_state": method.extra_state(),
        "rng": capture_rng_state(),
        "best": best.state_dict(),
        "model_metadata": session.metadata,
    }


def restore_training_state(session: Session, state: dict, source: str) -> None:
    """Networks, optimisers, the method's state and every RNG from `state` (read from `source`)."""
    method = session.method
    if state["method"] != method.name:
        raise CheckpointError(f"checkpoint {source}: written by method '{state['method']}', "
                              f"this run is '{method.name}'")
    load_networks(method, state, source)
    for name, opt in method.optimizers().items():
        opt.load_state_dict(state["optimizers"][name])
    method.load_extra_state(state["method_state"])
    restore_rng_state(state["rng"])


def read_resume_state(run_dir: Path, rank0: bool) -> tuple[dict, Path]:
    """(state, file) of last.pt, or of last.prev.pt when last.pt fails its checksum (the rejected file is set
    aside). Under torchrun rank 0 reads first and alone may set a rejected file aside; then the others read."""
    if rank0:
        found = load_resume_state(run_dir, set_aside_rejected=True)
    barrier()
    if not rank0:
        found = load_resume_state(run_dir, set_aside_rejected=False)
    return found
