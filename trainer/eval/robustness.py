"""Clean, PGD-k, CW-k and AutoAttack accuracy of one or more models on the same test points."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from trainer.attacks import PGD, CWLinf, eval_mode
from trainer.config import AttackConfig, EvalConfig
from trainer.eval.autoattack_resumable import autoattack_robust
from trainer.eval.class_fold import logsumexp_view


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


def evaluate_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eval_cfg: EvalConfig,
                   attack_cfg: AttackConfig, batch_size: int, *, autoattack_state: Path | None = None,
                   progress: Callable[[str], None] | None = None) -> dict[str, float]:
    """Accuracies in [0,1] keyed 'clean', 'pgd{k}', 'pgd_lse{k}', 'cw{k}', 'autoattack', plus seconds per attack.

    AutoAttack also reports its per-stage breakdown ('autoattack_after_<attack>'); with
    `autoattack_state` set it resumes from (and keeps updating) that state file.
    """
    eps = attack_cfg.eps if eval_cfg.eps is None else eval_cfg.eps
    norm = attack_cfg.norm
    result: dict[str, float] = {}
    generator = torch.Generator(device=x.device).manual_seed(eval_cfg.seed)
    for name in eval_cfg.attacks:
        start = time.perf_counter()
        if name == "clean":
            key, mask = "clean", correct_mask(model, x, y, batch_size)
        elif name == "pgd":
            steps = eval_cfg.pgd_steps
            attack = PGD(eps, eval_cfg.step_ratio * eps / steps, steps, norm=norm, random_start=True,
                         generator=generator)
            key, mask = f"pgd{steps}", attacked_mask(model, attack, x, y, batch_size)
        elif name == "pgd_lse":
            # DUCAT's adaptive attack: PGD-k on the logsumexp-fold (summed pair probabilities), judged by
            # the model's real (max-fold) prediction. A plain C-logit model: the same as PGD on its logits.
            steps = eval_cfg.pgd_steps
            attack = PGD(eps, eval_cfg.step_ratio * eps / steps, steps, norm=norm, random_start=True,
                         generator=generator)
            lse_model = logsumexp_view(model)
            key, mask = f"pgd_lse{steps}", torch.cat([correct_mask(model, attack(lse_model, xb, yb), yb, batch_size)
                                                      for xb, yb in _batches(x, y, batch_size)])
        elif name == "cw":
            if norm != "linf":
                continue  # CW-inf is an Linf attack; for L2 models AutoAttack and PGD-L2 cover it
            steps = eval_cfg.cw_steps
            attack = CWLinf(eps, eval_cfg.step_ratio * eps / steps, steps, generator=generator)
            key, mask = f"cw{steps}", attacked_mask(model, attack, x, y, batch_size)
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


def evaluate_models(models: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor, eval_cfg: EvalConfig,
                    attack_cfg: AttackConfig, batch_size: int, *, state_prefix: Path | None = None,
                    progress: Callable[[str], None] | None = None) -> dict[str, dict[str, float]]:
    """Every model on the same points; AutoAttack state files are `<state_prefix>.autoattack-<model>.json`."""
    def state_file(name: str) -> Path | None:
        if state_prefix is None:
            return None
        return state_prefix.with_name(f"{state_prefix.name}.autoattack-{name}.json")

    return {name: evaluate_model(m, x, y, eval_cfg, attack_cfg, batch_size, autoattack_state=state_file(name),
                                 progress=progress)
            for name, m in models.items()}
