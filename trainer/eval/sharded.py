"""`evaluate_models` under torchrun: the ranks share the points (clean, PGD, CW) or the AutoAttack units."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

import torch

from ..config import AttackConfig, EvalConfig
from ..distributed import all_reduce_max, all_reduce_sum, shard_bounds, world_size
from ..errors import ConfigError
from .progress import EvalProgress
from .robustness import copy_to_duplicates, evaluate_models, same_weights


def evaluate_across_ranks(models: dict[str, torch.nn.Module], x: torch.Tensor, y: torch.Tensor, ecfg: EvalConfig,
                          attack_cfg: AttackConfig, batch_size: int, *,
                          autoattack_states: Mapping[str, Path] | None = None,
                          progress: EvalProgress | None = None) -> dict:
    """`evaluate_models` under torchrun: every rank returns the accuracies over all of x.

    Clean, PGD and CW judge each point on its own, so rank r attacks only its contiguous share
    [r n / W, (r + 1) n / W) and the correct counts are summed. AutoAttack shards itself (its units go
    round-robin to the ranks, whose flags are merged after each attack: trainer/eval/autoattack_resumable.py),
    so it is given every point. The attack noise of a share differs from the single-process run's, so the
    numbers agree with it statistically, not bit for bit. Seconds are the slowest rank's. Models with an
    earlier one's weights are found once (every rank holds the same weights, so all agree) and not attacked.
    Progress bars (rank 0's) count rank 0's share of the points.
    """
    total = len(x)
    if total < world_size():
        raise ConfigError(f"config field 'eval.num_points' = {ecfg.num_points}: {total} test point(s) cannot be "
                          f"shared by the {world_size()} processes of this torchrun launch; use at least "
                          f"{world_size()}")
    start, stop = shard_bounds(total)
    duplicates = same_weights(models)
    unique = {name: model for name, model in models.items() if name not in duplicates}
    for name, original in duplicates.items():
        if progress is not None:
            progress.note(f"{name}: same weights as {original}, evaluated once")
    results: dict[str, dict[str, float]] = {name: {} for name in unique}
    for attack in ecfg.attacks:  # one attack at a time keeps the configured order of the keys
        one = dataclasses.replace(ecfg, attacks=(attack,))
        if attack == "autoattack":
            part = evaluate_models(unique, x, y, one, attack_cfg, batch_size, autoattack_states=autoattack_states,
                                   progress=progress, dedupe=False)
        else:
            local = evaluate_models(unique, x[start:stop], y[start:stop], one, attack_cfg, batch_size,
                                    progress=progress, dedupe=False)
            part = _combine_shares(local, stop - start, total)
        for name in unique:
            results[name].update(part[name])
    return copy_to_duplicates(results, list(models), duplicates)


def _combine_shares(local: dict[str, dict[str, float]], count: int, total: int) -> dict[str, dict[str, float]]:
    """Accuracies over this rank's `count` points -> accuracies over all `total` points of all ranks."""
    keys = [(name, k) for name, res in local.items() for k in res]
    # A fraction of `count` points times `count` is the correct count (exact after rounding for count < 2^24).
    counts = torch.tensor([0.0 if k.startswith("seconds_") else round(local[name][k] * count) for name, k in keys],
                          dtype=torch.float64)
    seconds = torch.tensor([local[name][k] if k.startswith("seconds_") else 0.0 for name, k in keys],
                           dtype=torch.float64)
    counts, seconds = all_reduce_sum(counts).tolist(), all_reduce_max(seconds).tolist()
    combined: dict[str, dict[str, float]] = {name: {} for name in local}
    for (name, k), c, sec in zip(keys, counts, seconds):
        combined[name][k] = sec if k.startswith("seconds_") else c / total
    return combined
