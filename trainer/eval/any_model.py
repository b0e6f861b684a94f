"""Robustness of any classifier, not only this trainer's: clean, PGD-k, CW-k and AutoAttack accuracy of an
`nn.Module` that takes [0,1] NCHW inputs and returns (N, C) logits (normalisation inside the model, eps in
pixel space, as in RobustBench's model zoo).

The same code as `python -m generalist_trainer eval`: trainer/eval/robustness.py `evaluate_model`, the resumable
AutoAttack of trainer/eval/autoattack_resumable.py, and under torchrun the sharing of the points over the ranks
(trainer/eval/sharded.py).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..analysis.sanity import model_checks, result_checks, warn_findings
from ..config import AttackConfig, DataConfig, EvalConfig, RunConfig, validate
from ..distributed import init_distributed, is_distributed, is_rank0, launch_env
from .progress import EvalProgress, as_progress
from .robustness import evaluate_model
from .sharded import evaluate_across_ranks

# The model sanity checks look at this many points (as `evaluate_checkpoint` does).
SANITY_POINTS = 64


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "linf",
             attacks: tuple[str, ...] | list[str] = EvalConfig.attacks, state_file: str | Path | None = None,
             batch_size: int | None = None, pgd_steps: int = EvalConfig.pgd_steps, cw_steps: int = EvalConfig.cw_steps,
             step_ratio: float = EvalConfig.step_ratio, autoattack_version: str = EvalConfig.autoattack_version,
             autoattack_batch_size: int | None = None, seed: int = EvalConfig.seed,
             progress: bool | EvalProgress = True, sanity_checks: bool = True) -> dict[str, float]:
    """Accuracies in [0, 1] of `model` on x (N, C, H, W) floats in [0, 1] with labels y (N,), per attack.

    Keys as in the eval JSON: 'clean', f'pgd{pgd_steps}', f'cw{cw_steps}' (Linf only), 'pgd_lse{k}', 'autoattack'
    with its per-stage 'autoattack_after_<attack>', and 'seconds_<key>' per attack. eps is in pixel space; each
    attack's step is step_ratio * eps / steps. `attacks` is drawn from clean, pgd, cw, autoattack, pgd_lse.

    `state_file`: AutoAttack keeps its progress there after every batch of `autoattack_batch_size` points
    (default `batch_size`), so a call stopped part-way (Ctrl-C, a killed job) and made again with the same model,
    points and settings resumes and ends with the same result as one uninterrupted call; a state file of another
    evaluation is refused. Under torchrun (every rank calling this with the same model, x and y) the ranks share
    the points of clean, PGD and CW and the batches of AutoAttack, and every rank returns the accuracies over all
    of x; each rank then keeps `<state_file>.rank<r>`.

    The model runs in eval mode during the attacks (its own flags are restored afterwards); x and y are moved to
    the device of its parameters. `progress`: a bar per attack stage on stderr. `sanity_checks`: warn
    (RobustnessSanityWarning) on the signs of gradient masking (trainer/analysis/sanity.py).
    """
    device = _device_of(model, x)
    x, y = _checked_points(x, y, device)
    eval_cfg = EvalConfig(num_points=len(x), attacks=tuple(attacks), pgd_steps=pgd_steps, cw_steps=cw_steps,
                          step_ratio=step_ratio, autoattack_version=autoattack_version,
                          autoattack_batch_size=autoattack_batch_size, seed=seed,
                          autoattack_resume=state_file is not None, progress=bool(progress))
    batch_size = DataConfig.eval_batch_size if batch_size is None else batch_size
    attack_cfg = AttackConfig(norm=norm, eps=eps)
    # The same field checks as a run's config; their messages name the config fields these arguments fill.
    validate(RunConfig(data=DataConfig(eval_batch_size=batch_size), attack=attack_cfg, eval=eval_cfg))
    state = None if state_file is None else Path(state_file)
    reporter = progress if isinstance(progress, EvalProgress) else as_progress(progress)
    if launch_env().distributed:
        init_distributed("auto", device)  # joins the torchrun process group unless already joined
    findings = model_checks(model, x[:SANITY_POINTS], y[:SANITY_POINTS]) if sanity_checks else []
    if is_distributed():
        result = evaluate_across_ranks({"model": model}, x, y, eval_cfg, attack_cfg, batch_size,
                                       autoattack_states=None if state is None else {"model": state},
                                       progress=reporter)["model"]
    else:
        result = evaluate_model(model, x, y, eval_cfg, attack_cfg, batch_size, autoattack_state=state,
                                progress=reporter)
    if sanity_checks and is_rank0():
        warn_findings([*findings, *result_checks(result)])
    return result


def _device_of(model: nn.Module, x: torch.Tensor) -> torch.device:
    """The device of the model's first parameter (or buffer); x's for a model without tensors."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return x.device


def _checked_points(x: torch.Tensor, y: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 4:
        raise ValueError(f"evaluate: x is {getattr(x, 'dtype', type(x).__name__)} of shape "
                         f"{tuple(getattr(x, 'shape', ()))}; expected floats (N, C, H, W) in [0, 1]")
    labels_ok = isinstance(y, torch.Tensor) and y.shape == (len(x),) and not (
        y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool)
    if not labels_ok:
        raise ValueError(f"evaluate: y is {getattr(y, 'dtype', type(y).__name__)} of shape "
                         f"{tuple(getattr(y, 'shape', ()))}; expected integer labels of shape ({len(x)},)")
    if len(x) == 0:
        raise ValueError("evaluate: x holds no points; expected at least one")
    lo, hi = torch.aminmax(x.detach())
    if bool((lo < 0.0) | (hi > 1.0)):
        raise ValueError(f"evaluate: x spans [{lo.item():.4g}, {hi.item():.4g}]; expected pixels in [0, 1] "
                         "(the model normalises its inputs itself)")
    return x.detach().to(device), y.to(device=device, dtype=torch.int64)

