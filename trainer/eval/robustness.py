"""Clean, PGD-k, CW-k and AutoAttack accuracy of one or more models on the same test points."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import torch
from torch import nn

from ..attacks import PGD, CWLinf, eval_mode
from ..checkpoint import unwrap
from ..config import AttackConfig, EvalConfig
from .autoattack_resumable import autoattack_robust
from .class_fold import logsumexp_view
from .progress import EvalProgress, Stage, as_progress

# The key of a model's result that names the earlier model holding the same weights (evaluate_models).
SAME_WEIGHTS = "same_weights_as"


def _batches(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for i in range(0, len(x), batch_size):
        yield x[i:i + batch_size], y[i:i + batch_size]


@torch.no_grad()
def correct_mask(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Boolean (N,) mask of points the model classifies correctly (model in eval mode)."""
    with eval_mode(model):
        return torch.cat([model(xb).argmax(1) == yb for xb, yb in _batches(x, y, batch_size)])


def attacked_mask(model: nn.Module, attack, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Correct-after-attack mask; the attack runs per batch and sets eval mode itself."""
    masks = []
    for xb, yb in _batches(x, y, batch_size):
        x_adv = attack(model, xb, yb)
        masks.append(correct_mask(model, x_adv, yb, batch_size))
    return torch.cat(masks)


def _stage_mask(bar: Stage, model: nn.Module, attack: Callable | None, attacked: nn.Module, x: torch.Tensor,
                y: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(N,) correct mask of `model` on x (attack None) or on `attack(attacked, xb, yb)` per batch, reported to
    `bar` batch by batch."""
    masks, survived = [], 0
    for xb, yb in _batches(x, y, batch_size):
        masks.append(correct_mask(model, xb if attack is None else attack(attacked, xb, yb), yb, batch_size))
        if bar.active:
            survived += int(masks[-1].sum())  # a host sync per batch, only while progress is shown
            bar.update(len(yb), survived)
    return torch.cat(masks)


def evaluate_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eval_cfg: EvalConfig,
                   attack_cfg: AttackConfig, batch_size: int, *, autoattack_state: Path | None = None,
                   progress: EvalProgress | bool | None = None) -> dict[str, float]:
    """Accuracies in [0,1] keyed 'clean', 'pgd{k}', 'pgd_lse{k}', 'cw{k}', 'autoattack', plus seconds per attack.

    AutoAttack also reports its per-stage breakdown ('autoattack_after_<attack>'); with
    `autoattack_state` set it resumes from (and keeps updating) that state file. `progress`: True shows a
    bar per stage on stderr (trainer/eval/progress.py), an EvalProgress chooses where; None / False: silent.
    """
    progress = as_progress(progress)
    eps = attack_cfg.eps if eval_cfg.eps is None else eval_cfg.eps
    norm = attack_cfg.norm
    result: dict[str, float] = {}
    generator = torch.Generator(device=x.device).manual_seed(eval_cfg.seed)

    def run_stage(key: str, attack: Callable | None = None, attacked: nn.Module = model) -> torch.Tensor:
        with progress.stage(key, len(x), counted="correct" if attack is None else "robust") as bar:
            return _stage_mask(bar, model, attack, attacked, x, y, batch_size)

    for name in eval_cfg.attacks:
        start = time.perf_counter()
        if name == "clean":
            key = "clean"
            mask = run_stage(key)
        elif name == "pgd":
            steps = eval_cfg.pgd_steps
            attack = PGD(eps, eval_cfg.step_ratio * eps / steps, steps, norm=norm, random_start=True,
                         generator=generator)
            key = f"pgd{steps}"
            mask = run_stage(key, attack)
        elif name == "pgd_lse":
            # DUCAT's adaptive attack: PGD-k on the logsumexp-fold (summed pair probabilities), judged by
            # the model's real (max-fold) prediction. A plain C-logit model: the same as PGD on its logits.
            steps = eval_cfg.pgd_steps
            attack = PGD(eps, eval_cfg.step_ratio * eps / steps, steps, norm=norm, random_start=True,
                         generator=generator)
            key = f"pgd_lse{steps}"
            mask = run_stage(key, attack, logsumexp_view(model))
        elif name == "cw":
            if norm != "linf":
                continue  # CW-inf is an Linf attack; for L2 models AutoAttack and PGD-L2 cover it
            steps = eval_cfg.cw_steps
            attack = CWLinf(eps, eval_cfg.step_ratio * eps / steps, steps, generator=generator)
            key = f"cw{steps}"
            mask = run_stage(key, attack)
        elif name == "autoattack":
            with eval_mode(model):
                outcome = autoattack_robust(
                    model, x, y, eps=eps, norm=norm, version=eval_cfg.autoattack_version, seed=eval_cfg.seed,
                    batch_size=eval_cfg.autoattack_batch_size or batch_size, state_path=autoattack_state,
                    progress=progress)
            key, mask = "autoattack", outcome.robust
            result.update({f"autoattack_after_{stage}": acc for stage, acc in outcome.stage_accuracy.items()
                           if stage != "clean"})
            if outcome.stage_seconds is not None:
                # seconds_autoattack below is this call's wall time; after a resume these cover every session.
                result.update({f"seconds_autoattack_{stage}": round(sec, 2)
                               for stage, sec in outcome.stage_seconds.items()})
                result["seconds_autoattack_all_sessions"] = round(sum(outcome.stage_seconds.values()), 2)
        else:  # validated in config; kept for direct callers
            raise ValueError(f"unknown evaluation attack {name!r}")
        result[key] = float(mask.float().mean())
        result[f"seconds_{key}"] = round(time.perf_counter() - start, 2)
    return result


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 of what decides a model's outputs: its structure (the module's repr: layers, dropout rates, a
    DUCAT fold) and every parameter and buffer (name, dtype, shape and bytes). Equal fingerprints: the same
    network, bit for bit (but for a sha256 collision)."""
    network = unwrap(model)
    digest = hashlib.sha256(repr(network).encode())
    for name, tensor in sorted(network.state_dict().items()):
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}".encode())
        if data.numel():
            digest.update(data.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def same_weights(models: Mapping[str, nn.Module]) -> dict[str, str]:
    """{name: the first earlier model with the same fingerprint} for each model an earlier one duplicates.

    After a Generalist sync the global model and both experts hold the same weights: one evaluation serves
    all three.
    """
    first_with: dict[str, str] = {}
    duplicates: dict[str, str] = {}
    for name, model in models.items():
        fingerprint = weights_fingerprint(model)
        if fingerprint in first_with:
            duplicates[name] = first_with[fingerprint]
        else:
            first_with[fingerprint] = name
    return duplicates


def copy_to_duplicates(results: Mapping[str, dict], order: list[str], duplicates: Mapping[str, str]) -> dict:
    """Every model of `order` in that order; a duplicate gets SAME_WEIGHTS and its original's accuracies (not
    its seconds: nothing was spent on it)."""
    return {name: ({SAME_WEIGHTS: duplicates[name],
                    **{k: v for k, v in results[duplicates[name]].items() if not k.startswith("seconds_")}}
                   if name in duplicates else results[name])
            for name in order}


def autoattack_state_files(prefix: Path, names: Iterable[str]) -> dict[str, Path]:
    """{model name: `<prefix>.autoattack-<name>.json`}: where `evaluate_checkpoint` keeps each model's AutoAttack
    progress beside its results (eval_best.json -> eval_best.autoattack-global.json)."""
    return {name: prefix.with_name(f"{prefix.name}.autoattack-{name}.json") for name in names}


def evaluate_models(models: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor, eval_cfg: EvalConfig,
                    attack_cfg: AttackConfig, batch_size: int, *, autoattack_states: Mapping[str, Path] | None = None,
                    progress: EvalProgress | bool | None = None, dedupe: bool = True) -> dict[str, dict]:
    """Every model on the same points; a model named in `autoattack_states` resumes (and keeps updating) its
    AutoAttack from that state file.

    With `dedupe`, a model whose weights equal an earlier one's (`same_weights`) is not attacked again: its
    result is the earlier model's accuracies with SAME_WEIGHTS naming it. `progress` as in `evaluate_model`.
    """
    progress = as_progress(progress)
    states = autoattack_states or {}
    duplicates = same_weights(models) if dedupe and len(models) > 1 else {}
    results = {}
    for name, model in models.items():
        if name in duplicates:
            progress.note(f"{name}: same weights as {duplicates[name]}, evaluated once")
            continue
        results[name] = evaluate_model(model, x, y, eval_cfg, attack_cfg, batch_size,
                                       autoattack_state=states.get(name), progress=progress.labelled(name))
    return copy_to_duplicates(results, list(models), duplicates)
