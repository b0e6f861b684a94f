"""AutoAttack that survives interruption and splits across torchrun ranks.

pyautoattack runs its attacks in sequence (standard: APGD-CE, APGD-T, FAB-T, Square), each on the
points still robust after the previous ones, in batches of `batch_size` taken in index order, and it
re-seeds every batch with the same seed. A batch's outcome therefore depends only on its own points,
so this module drives that same schedule one batch (a "unit") at a time: after every unit the
per-point robust flags go to a state file (written atomically), and a restarted evaluation skips the
finished units and ends with exactly the flags an uninterrupted `run_standard_evaluation` gives.

Under torchrun, unit j of each attack goes to rank j % world_size; after each attack the ranks merge
their flags (a point is robust only if no rank broke it) so the next attack sees the same points
everywhere. Each rank keeps its own state file.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ..checkpoint import atomic_write, unwrap
from ..errors import CheckpointError
from .autoattack_adapter import build_autoattack
from .progress import EvalProgress

STATE_FORMAT = 1
_clock = time.perf_counter  # a name of its own so that the timing test can count ticks instead


@dataclass
class AutoAttackState:
    """Everything needed to continue: which attack, which of its units are done, the flags so far."""

    fingerprint: dict
    attacks: list[str]
    attack_index: int = 0  # the attack being run; len(attacks) once finished
    start_flags: list[bool] = field(default_factory=list)  # flags when this attack began: define its units
    flags: list[bool] = field(default_factory=list)  # current robust flags
    units_done: list[int] = field(default_factory=list)  # this rank's finished units of the current attack
    # Robust accuracy after the clean pass and after each finished attack (AutoAttack's own breakdown).
    stage_accuracy: dict[str, float] = field(default_factory=dict)
    # This rank's seconds in the clean pass and in each attack's finished units, summed over every session
    # that worked on this state: a resumed evaluation's own wall time covers only its part. None for a
    # state file written before timings were kept (its earlier sessions' time is unknown).
    stage_seconds: dict[str, float] | None = field(default_factory=dict)
    format: int = STATE_FORMAT

    @property
    def finished(self) -> bool:
        return self.attack_index >= len(self.attacks)


@dataclass(frozen=True)
class AutoAttackResult:
    robust: torch.Tensor  # (N,) bool on the CPU: correct after every attack
    stage_accuracy: dict[str, float]
    resumed: bool  # True when finished units were taken from a state file
    stage_seconds: dict[str, float] | None  # AutoAttackState.stage_seconds


def _sha256_tensors(tensors: list[tuple[str, torch.Tensor]]) -> str:
    digest = hashlib.sha256()
    for name, t in tensors:
        digest.update(name.encode())
        data = t.detach().to("cpu").contiguous().reshape(-1)
        digest.update(str(data.dtype).encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def evaluation_fingerprint(model: nn.Module, x: torch.Tensor, y: torch.Tensor, **settings) -> dict:
    """What a state file is valid for: these exact weights, points and attack settings."""
    weights = sorted(unwrap(model).state_dict().items())
    return {"model_sha256": _sha256_tensors(weights), "points_sha256": _sha256_tensors([("x", x), ("y", y)]),
            "num_points": len(x), **settings}


def load_state(path: Path, fingerprint: dict) -> AutoAttackState | None:
    """The saved state for this exact evaluation, None when there is none; a foreign state is refused."""
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text())
        if not isinstance(raw, dict):
            raise ValueError(f"expected a JSON object, got {type(raw).__name__}")
        raw.setdefault("stage_seconds", None)  # written before timings were kept
        state = AutoAttackState(**raw)
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"AutoAttack state file {path}: unreadable ({exc}); delete it to start over") from None
    if state.format != STATE_FORMAT:
        raise CheckpointError(f"AutoAttack state file {path}: format {state.format}, expected {STATE_FORMAT}")
    differing = sorted(k for k in set(fingerprint) | set(state.fingerprint)
                       if fingerprint.get(k) != state.fingerprint.get(k))
    if differing:
        # Refuse rather than silently discard hours of attack work done for another setting.
        detail = ", ".join(f"{k}: state {state.fingerprint.get(k)!r} vs now {fingerprint.get(k)!r}"
                           for k in differing)
        raise CheckpointError(f"AutoAttack state file {path} belongs to another evaluation ({detail}); "
                              f"rerun with the same model and settings, or delete the file to start over")
    return state


def save_state(path: Path, state: AutoAttackState) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(asdict(state)).encode()))


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _merge_across_ranks(flags: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Logical AND of every rank's flags: a point broken on any rank is broken."""
    t = flags.to(device=device, dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t.to("cpu").bool()


def _agree_on_progress(state: AutoAttackState, device: torch.device) -> AutoAttackState:
    """After a restart of every rank, bring ranks that stopped one merge behind up to the furthest rank.

    A rank only moves to attack a+1 after the merge of attack a, which needs every rank to have finished
    its units of a; so a rank that is behind has nothing left to do for a and adopts the merged flags.
    """
    index = torch.tensor([state.attack_index], dtype=torch.int64, device=device)
    furthest, lowest = index.clone(), index.clone()
    dist.all_reduce(furthest, op=dist.ReduceOp.MAX)
    dist.all_reduce(lowest, op=dist.ReduceOp.MIN)
    if int(furthest) == int(lowest):
        return state
    # The lowest rank at the furthest index shares its flags and stage breakdown.
    rank, world = _rank_and_world()
    candidate = torch.tensor([rank if state.attack_index == int(furthest) else world], device=device)
    dist.all_reduce(candidate, op=dist.ReduceOp.MIN)
    source = int(candidate)
    flags = torch.tensor(state.flags, dtype=torch.int32, device=device)
    dist.broadcast(flags, src=source)
    stages = [json.dumps(state.stage_accuracy)]
    dist.broadcast_object_list(stages, src=source)
    if state.attack_index < int(furthest):
        merged = flags.to("cpu").bool().tolist()
        state.attack_index, state.flags, state.start_flags = int(furthest), merged, merged
        state.units_done, state.stage_accuracy = [], json.loads(stages[0])
    return state


def _attack_unit(adversary, attack: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Run one attack of the official driver on one batch; (B,) bool robust mask on the CPU."""
    adversary.attacks_to_run = [attack]
    # batch_size = the whole unit: exactly the batch the uninterrupted run would form.
    _, predicted = adversary.run_standard_evaluation(x, y, batch_size=len(x))
    return (predicted == y).to("cpu")


@torch.no_grad()
def _clean_flags(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                 progress: EvalProgress) -> torch.Tensor:
    flags, correct = [], 0
    with progress.stage("autoattack clean", len(x), counted="correct") as bar:
        for i in range(0, len(x), batch_size):
            flags.append(model(x[i:i + batch_size]).argmax(1).eq(y[i:i + batch_size]).cpu())
            correct += int(flags[-1].sum())
            bar.update(len(flags[-1]), correct)
    return torch.cat(flags)


def autoattack_robust(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str,
                      version: str, seed: int, batch_size: int, state_path: Path | None = None,
                      progress: EvalProgress | None = None) -> AutoAttackResult:
    """Per-point robustness under AutoAttack, resumable through `state_path` and sharded across ranks.

    The model must already be in eval mode. The caller's global RNG state is left untouched (the
    attacks seed the global generators themselves, so they run inside a forked RNG). `progress`: a bar
    per stage (trainer/eval/progress.py); a resumed attack's bar starts at the points already done.
    """
    progress = progress if progress is not None else EvalProgress(False)
    rank, world = _rank_and_world()
    device = x.device
    comm_device = device if (world > 1 and dist.get_backend() == "nccl") else torch.device("cpu")
    fingerprint = evaluation_fingerprint(model, x, y, eps=eps, norm=norm, version=version, seed=seed,
                                         batch_size=batch_size, world_size=world)
    if state_path is not None and world > 1:
        state_path = state_path.with_name(f"{state_path.name}.rank{rank}")
    state = load_state(state_path, fingerprint) if state_path is not None else None
    resumed = state is not None
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        adversary = build_autoattack(model, eps=eps, norm=norm, seed=seed, version=version, device=device)
        if state is None:
            started = _clock()
            clean = _clean_flags(model, x, y, batch_size, progress).tolist()
            state = AutoAttackState(fingerprint, list(adversary.attacks_to_run), start_flags=clean, flags=clean,
                                    stage_accuracy={"clean": sum(clean) / len(clean)},
                                    stage_seconds={"clean": _clock() - started})
            if state_path is not None:
                save_state(state_path, state)
        if world > 1:
            state = _agree_on_progress(state, comm_device)
        while not state.finished:
            attack = state.attacks[state.attack_index]
            start = torch.tensor(state.start_flags, dtype=torch.bool)
            flags = torch.tensor(state.flags, dtype=torch.bool)
            robust_idx = start.nonzero().flatten()
            n_units = math.ceil(len(robust_idx) / batch_size)
            # This rank's units and their sizes (the last unit may be short); under torchrun the bar is
            # rank 0's share.
            mine = {unit: min(batch_size, len(robust_idx) - unit * batch_size) for unit in range(rank, n_units, world)}
            done_before = sum(size for unit, size in mine.items() if unit in state.units_done)
            with progress.stage(f"autoattack {attack}", sum(mine.values()), initial=done_before) as bar:
                for unit in mine:
                    if unit in state.units_done:
                        continue
                    idx = robust_idx[unit * batch_size:(unit + 1) * batch_size]
                    started = _clock()
                    flags[idx] = _attack_unit(adversary, attack, x[idx.to(device)], y[idx.to(device)])
                    if state.stage_seconds is not None:
                        state.stage_seconds = {**state.stage_seconds,
                                               attack: state.stage_seconds.get(attack, 0.0) + _clock() - started}
                    state.flags = flags.tolist()
                    state.units_done = [*state.units_done, unit]
                    if state_path is not None:
                        save_state(state_path, state)
                    bar.update(len(idx), int(flags.sum()), len(flags))
            if world > 1:
                flags = _merge_across_ranks(flags, comm_device)
            merged = flags.tolist()
            state.stage_accuracy = {**state.stage_accuracy, attack: sum(merged) / len(merged)}
            state.attack_index += 1
            state.start_flags, state.flags, state.units_done = merged, merged, []
            if state_path is not None:
                save_state(state_path, state)
    stage_seconds = dict(state.stage_seconds) if state.stage_seconds is not None else None
    return AutoAttackResult(torch.tensor(state.flags, dtype=torch.bool), dict(state.stage_accuracy), resumed,
                            stage_seconds)
