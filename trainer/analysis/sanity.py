"""Sanity checks of a robustness evaluation: the classic signs that an attack, not the model, failed.

After Carlini et al., "On Evaluating Adversarial Robustness" (arXiv:1902.06705, sections 5-6) and
AutoAttack's `checks.py` (Croce & Hein, ICML 2020). Each check returns a `SanityFinding` (what was seen,
with numbers, and why it matters) or None; `warn_findings` emits them as `RobustnessSanityWarning`s.

Model checks run the model the way every attack does (inside `eval_mode`), leave the model's training
flags, its buffers (BatchNorm statistics) and the global RNG exactly as they were, and need a few
dozen points. Result checks look only at accuracies.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import eval_mode

# Linf radius at which every image in [0, 1] can be moved to the all-0.5 image: any classifier then
# answers one class for all points, so its accuracy is at most the largest class share.
LINF_UNIVERSAL_EPS = 0.5

EXPLANATIONS = {
    "train_mode": (
        "Evaluation must run the model in eval mode: in train mode dropout makes the forward random and "
        "BatchNorm normalises with the statistics of the attacked batch (and overwrites its running "
        "statistics), so gradients are noisy, accuracy depends on which points share a batch, and "
        "attacks look weaker than they are (Carlini et al. 2019, sec. 5). Call model.eval() and make "
        "sure no submodule overrides train() or uses batch statistics at eval time "
        "(BatchNorm(track_running_stats=False), F.dropout(training=True))."),
    "zero_gradients": (
        "Gradient-based attacks (PGD, APGD, CW) cannot move a point whose input gradient is exactly zero, "
        "so such points count as robust without being so: the classic sign of gradient masking "
        "(non-differentiable preprocessing such as quantisation, saturated softmax, dead units). "
        "Check the model for such operations; evaluate with gradient-free attacks (AutoAttack's Square) "
        "or a margin loss (CW), which does not saturate (Athalye et al., ICML 2018; AutoAttack checks.py)."),
    "nondeterministic_forward": (
        "Two forward passes on the same inputs in eval mode gave different logits. Attacks that assume a "
        "fixed function then optimise against noise and overestimate robustness, and reported accuracies "
        "are not reproducible. If the randomness is intended (a randomised defence), evaluate with "
        "expectation over transformation / AutoAttack version='rand'; otherwise find the layer that "
        "stays random in eval mode (Athalye et al., ICML 2018, sec. 4.3)."),
    "autoattack_above_pgd": (
        "AutoAttack runs APGD-CE, a stronger form of PGD on the same loss, plus targeted attacks, so on the "
        "same points and eps its accuracy should not exceed PGD's or CW's. When it does, the evaluations "
        "differ in something other than the attack: different points, eps or norm, a model that is random "
        "or batch-dependent, or AutoAttack given probabilities instead of logits (AutoAttack checks.py)."),
    "accuracy_not_decreasing": (
        "Robust accuracy can only fall as the threat model grows: every perturbation allowed at a small eps "
        "is allowed at a larger one. Accuracy that rises with eps means the attack, not the model, got "
        "weaker (a fixed step count too small for the radius, masked gradients); accuracy that stays above "
        "the largest class share at Linf eps >= 0.5, where every image can be turned into the same grey "
        "image, means the attack fails outright (Carlini et al. 2019, sec. 5.2)."),
    "eps_zero_differs_from_clean": (
        "An attack with eps = 0 returns the inputs unchanged, so its accuracy must equal the clean accuracy "
        "on the same points. A difference means the evaluation is random or depends on batch composition "
        "(train-mode BatchNorm, dropout) or that the two numbers come from different points or models."),
}
CHECKS = tuple(EXPLANATIONS)


class RobustnessSanityWarning(UserWarning):
    """A robustness evaluation shows a sign of gradient masking or of a broken evaluation."""


@dataclass(frozen=True)
class SanityFinding:
    """One fired check: its name, what was observed (with numbers), and why that matters."""

    check: str
    message: str
    explanation: str
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"[{self.check}] {self.message} -- {self.explanation}"


def finding(check: str, message: str, **details) -> SanityFinding:
    return SanityFinding(check, message, EXPLANATIONS[check], details)


def warn_findings(findings: Sequence[SanityFinding], stacklevel: int = 2) -> None:
    for f in findings:
        warnings.warn(RobustnessSanityWarning(str(f)), stacklevel=stacklevel + 1)


@contextmanager
def _as_evaluated(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Run the model as attacks do (eval_mode); afterwards its buffers and the global RNG are as before.

    The buffers are restored because a model that misbehaves in exactly the way being checked (BatchNorm
    stuck in train mode) would otherwise have its running statistics overwritten by the check.
    """
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), eval_mode(model), torch.autocast(device.type, enabled=False):
            yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def _max_relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| over the logits, relative to the largest logit magnitude (at least 1)."""
    scale = max(1.0, float(a.abs().max()))
    return float((a - b).abs().max()) / scale


# ---------------------------------------------------------------------------------------------
# Model checks


def check_train_mode(model: nn.Module, x: torch.Tensor, tolerance: float = 1e-4) -> SanityFinding | None:
    """Fires when, inside `eval_mode`, a submodule still runs in training mode, or when a point's logits
    depend on the other points of its batch (BatchNorm using batch statistics at eval time)."""
    in_training: list[str] = []

    def record(name: str):
        def hook(module: nn.Module, _inputs) -> None:
            if module.training and name not in in_training:
                in_training.append(name)
        return hook

    handles = [m.register_forward_pre_hook(record(name or type(model).__name__)) for name, m in model.named_modules()]
    try:
        with _as_evaluated(model, x.device), torch.no_grad():
            full = model(x).float()
            again = model(x).float()
            half = max(1, len(x) // 2)
            split = torch.cat([model(x[:half]).float(), model(x[half:]).float()]) if len(x) > 1 else full
    finally:
        for h in handles:
            h.remove()
    if in_training:
        shown = ", ".join(in_training[:8]) + (", ..." if len(in_training) > 8 else "")
        return finding("train_mode", f"{len(in_training)} submodule(s) ran in training mode although the model "
                       f"was put in eval mode: {shown}", modules=in_training)
    deterministic = _max_relative_difference(full, again) <= tolerance
    batch_effect = _max_relative_difference(full, split)
    if deterministic and batch_effect > tolerance:
        return finding("train_mode", f"in eval mode, the logits of the same points changed by {batch_effect:.3g} "
                       f"(relative) when the batch of {len(x)} was split in two: the forward uses batch "
                       "statistics", relative_difference=batch_effect, batch_size=len(x))
    return None


def check_zero_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                         max_fraction: float = 0.05) -> SanityFinding | None:
    """Fires when more than `max_fraction` of the points have an all-zero cross-entropy input gradient."""
    with _as_evaluated(model, x.device), torch.enable_grad():
        leaf = x.detach().float().requires_grad_(True)
        loss = F.cross_entropy(model(leaf).float(), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, leaf)
    flat = grad.flatten(1)
    zero_points = int((flat.abs().amax(1) == 0).sum())
    fraction = zero_points / max(1, len(x))
    if fraction > max_fraction:
        zero_entries = float((flat == 0).float().mean())
        return finding("zero_gradients", f"{zero_points} of {len(x)} points ({fraction:.1%}) have an input gradient "
                       f"that is exactly zero (threshold {max_fraction:.1%}); {zero_entries:.1%} of all gradient "
                       "entries are zero", zero_points=zero_points, num_points=len(x), fraction=fraction,
                       zero_entry_fraction=zero_entries)
    return None


def check_deterministic(model: nn.Module, x: torch.Tensor, repeats: int = 3,
                        tolerance: float = 1e-4) -> SanityFinding | None:
    """Fires when repeated eval-mode forward passes on the same inputs disagree (beyond float noise)."""
    with _as_evaluated(model, x.device), torch.no_grad():
        outputs = [model(x).float() for _ in range(max(2, repeats))]
    difference = max(_max_relative_difference(outputs[0], o) for o in outputs[1:])
    changed = max(int((outputs[0].argmax(1) != o.argmax(1)).sum()) for o in outputs[1:])
    if difference > tolerance or changed:
        return finding("nondeterministic_forward", f"{len(outputs)} forward passes on the same {len(x)} points "
                       f"differ by up to {difference:.3g} (relative to the largest logit); {changed} "
                       "prediction(s) changed", relative_difference=difference, changed_predictions=changed)
    return None


def model_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, max_points: int = 256) -> list[SanityFinding]:
    """The three model checks on the first `max_points` points of x (N, C, H, W) in [0, 1], y (N,)."""
    x, y = x[:max_points], y[:max_points]
    results = [check_train_mode(model, x), check_zero_gradients(model, x, y), check_deterministic(model, x)]
    return [r for r in results if r is not None]


# ---------------------------------------------------------------------------------------------
# Result checks


_WHITE_BOX = re.compile(r"(pgd|pgd_lse|cw)\d+")


def check_autoattack_vs_pgd(result: Mapping[str, float], margin: float = 0.005) -> SanityFinding | None:
    """Fires when AutoAttack's accuracy exceeds the lowest PGD-k / PGD-LSE-k / CW-k accuracy by more than `margin`.

    `result` is one model's accuracies in [0, 1] on the same points, keyed like `evaluate_model`'s output
    ('clean', 'pgd20', 'cw20', 'autoattack').
    """
    aa = result.get("autoattack")
    white = {k: float(v) for k, v in result.items() if _WHITE_BOX.fullmatch(k)}
    if aa is None or not white:
        return None
    strongest = min(white, key=white.get)
    if aa > white[strongest] + margin:
        return finding("autoattack_above_pgd", f"AutoAttack accuracy {aa:.2%} is above {strongest} accuracy "
                       f"{white[strongest]:.2%} on the same points", autoattack=aa, attack=strongest,
                       attack_accuracy=white[strongest])
    return None


def check_accuracy_vs_eps(curve: Sequence[tuple[float, float]], *, norm: str = "linf", margin: float = 0.01,
                          largest_class_share: float | None = None) -> SanityFinding | None:
    """Fires when accuracy rises with eps by more than `margin` between two radii of the sweep, or (Linf)
    stays above the largest class share (+ margin) at eps >= 0.5. `curve` is [(eps, accuracy in [0, 1])]."""
    points = sorted((float(e), float(a)) for e, a in curve)
    problems, rises = [], []
    for (e0, a0), (e1, a1) in zip(points, points[1:]):
        if a1 > a0 + margin:
            rises.append({"from_eps": e0, "to_eps": e1, "from_accuracy": a0, "to_accuracy": a1})
            problems.append(f"accuracy rose from {a0:.2%} at eps {e0:.4g} to {a1:.2%} at eps {e1:.4g}")
    stuck = []
    if norm == "linf" and largest_class_share is not None:
        for e, a in points:
            if e >= LINF_UNIVERSAL_EPS and a > largest_class_share + margin:
                stuck.append({"eps": e, "accuracy": a})
                problems.append(f"accuracy is {a:.2%} at Linf eps {e:.4g}, above the largest class share "
                                f"{largest_class_share:.2%}")
    if problems:
        return finding("accuracy_not_decreasing", "; ".join(problems), rises=rises, stuck=stuck)
    return None


def check_eps_zero_matches_clean(clean: float, accuracy_at_zero: float, margin: float = 0.0) -> SanityFinding | None:
    """Fires when the attack's accuracy at eps 0 differs from the clean accuracy by more than `margin`."""
    difference = abs(float(accuracy_at_zero) - float(clean))
    if difference > margin + 1e-9:
        return finding("eps_zero_differs_from_clean", f"accuracy at eps 0 is {accuracy_at_zero:.2%} but clean "
                       f"accuracy is {clean:.2%} on the same points", clean=clean, accuracy_at_zero=accuracy_at_zero)
    return None


def curve_checks(clean: float, curve: Sequence[tuple[float, float]], *, norm: str = "linf",
                 largest_class_share: float | None = None) -> list[SanityFinding]:
    """The two checks of an accuracy-vs-eps sweep (which includes eps 0) on the points of `clean`."""
    results = [check_accuracy_vs_eps(curve, norm=norm, largest_class_share=largest_class_share)]
    at_zero = [a for e, a in curve if e == 0]
    if at_zero:
        results.append(check_eps_zero_matches_clean(clean, at_zero[0]))
    return [r for r in results if r is not None]


def result_checks(result: Mapping[str, float]) -> list[SanityFinding]:
    """The checks of one model's evaluation result (`evaluate_model` output)."""
    return [r for r in [check_autoattack_vs_pgd(result)] if r is not None]


def run_sanity_checks(model: nn.Module | None = None, x: torch.Tensor | None = None, y: torch.Tensor | None = None,
                      *, result: Mapping[str, float] | None = None, curve: Sequence[tuple[float, float]] | None = None,
                      clean: float | None = None, norm: str = "linf", largest_class_share: float | None = None,
                      emit: bool = True) -> list[SanityFinding]:
    """Every check whose inputs are given; findings are emitted as RobustnessSanityWarning when `emit`."""
    findings: list[SanityFinding] = []
    if model is not None and x is not None and y is not None:
        findings += model_checks(model, x, y)
    if result is not None:
        findings += result_checks(result)
    if curve is not None:
        if clean is None and result is not None:
            clean = result.get("clean")
        if clean is None:
            findings += [r for r in [check_accuracy_vs_eps(curve, norm=norm, largest_class_share=largest_class_share)]
                         if r is not None]
        else:
            findings += curve_checks(clean, curve, norm=norm, largest_class_share=largest_class_share)
    if emit:
        warn_findings(findings, stacklevel=2)
    return findings
