"""Training checkpoints (the whole state, atomic, weights_only-loadable) and release exports.

A training checkpoint holds every network, every optimiser, the epoch / step position, the method's
own state (Generalist's step counter), every RNG state, the best validation score so far and the
resolved config: enough for `--resume` to continue a run bit-for-bit on the CPU.
A release export is the shipped model only: safetensors weights plus a JSON config.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer.errors import CheckpointError

FORMAT_VERSION = 1
LAST = "last.pt"
BEST = "best.pt"


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module behind DDP (`.module`) or torch.compile (`._orig_mod`) wrappers."""
    while True:
        if hasattr(module, "_orig_mod"):
            module = module._orig_mod
        elif isinstance(module, nn.parallel.DistributedDataParallel):
            module = module.module
        else:
            return module


def atomic_write(path: Path, write: Any) -> None:
    """Write through `write(file_obj)` into a temporary file in the same folder, fsync, then rename.

    A crash at any moment leaves either the previous file or the complete new one, never a torn file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    payload = {"format_version": FORMAT_VERSION, **state}
    atomic_write(Path(path), lambda f: torch.save(payload, f))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load with weights_only=True (no arbitrary code runs); errors name the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"checkpoint {path}: cannot be read as a training checkpoint ({exc})") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path}: expected format_version {FORMAT_VERSION}, found "
                              f"{state.get('format_version') if isinstance(state, dict) else type(state)}")
    for key in ("config", "networks", "optimizers", "position", "method_state", "rng"):
        if key not in state:
            raise CheckpointError(f"checkpoint {path}: missing the '{key}' entry")
    return state


def resolve_checkpoint(run_or_file: str | Path, which: str = "best") -> Path:
    """A checkpoint file, or a run folder plus 'best' / 'last' (best falls back to last if absent)."""
    p = Path(run_or_file)
    if p.is_file():
        return p
    if not p.is_dir():
        raise CheckpointError(f"{p}: neither a checkpoint file nor a run folder")
    if which not in ("best", "last"):
        raise CheckpointError(f"checkpoint choice {which!r}: expected 'best' or 'last'")
    candidate = p / (BEST if which == "best" else LAST)
    if candidate.is_file():
        return candidate
    if which == "best" and (p / LAST).is_file():
        return p / LAST
    raise CheckpointError(f"run folder {p}: no {candidate.name} (has training been run there?)")


def export_safetensors(model: nn.Module, out_dir: Path, model_config: dict[str, Any]) -> Path:
    """Write `model.safetensors` (model weights only) and `config.json` beside it; returns the weights path."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().clone().cpu() for k, v in unwrap(model).state_dict().items()}
    weights = out_dir / "model.safetensors"
    tmp = out_dir / ".model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, weights)
    atomic_write(out_dir / "config.json", lambda f: f.write(json.dumps(model_config, indent=2).encode()))
    return weights
