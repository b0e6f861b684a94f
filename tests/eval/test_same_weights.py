"""Models with identical weights are evaluated once (trainer/eval/robustness.py `same_weights`), reported with
"same_weights_as" and the same accuracies; a model that differs in one bit is evaluated on its own."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from generalist_trainer.trainer.config import AttackConfig, EvalConfig
from generalist_trainer.trainer.eval import robustness
from generalist_trainer.trainer.eval.autoattack_resumable import AutoAttackResult
from generalist_trainer.trainer.eval.class_fold import FoldedLogits
from generalist_trainer.trainer.eval.robustness import (
    SAME_WEIGHTS,
    autoattack_state_files,
    evaluate_models,
    same_weights,
    weights_fingerprint,
)
from generalist_trainer.trainer.eval.saved_models import results_table
from generalist_trainer.trainer.eval.sharded import evaluate_across_ranks
from tests.eval.aa_shard_worker import EPS, tiny_problem

CFG = EvalConfig(num_points=20, eps=EPS, attacks=("clean", "pgd", "cw"), pgd_steps=2, cw_steps=2)


def one_ulp_up(model: nn.Module) -> nn.Module:
    """A copy whose first weight differs from the original's in its last bit."""
    other = copy.deepcopy(model)
    with torch.no_grad():
        w = other[1].weight
        w[0, 0] = torch.nextafter(w[0, 0], torch.tensor(float("inf")))
    return other


def bn_net(dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Dropout(dropout), nn.Flatten(),
                         nn.Linear(32, 10)).eval()


def test_fingerprint_is_exact_on_weights_buffers_and_structure():
    model, _, _ = tiny_problem()
    assert weights_fingerprint(model) == weights_fingerprint(copy.deepcopy(model))
    assert weights_fingerprint(model) != weights_fingerprint(one_ulp_up(model))
    net = bn_net()
    moved = copy.deepcopy(net)
    moved[1].running_mean[1] += 1.0  # a buffer, not a parameter
    counted = copy.deepcopy(net)
    counted[1].num_batches_tracked += 1  # an integer buffer
    assert len({weights_fingerprint(m) for m in (net, moved, counted)}) == 3
    # Same tensors, other outputs: the structure (a dropout rate, the DUCAT fold) is part of the fingerprint.
    assert weights_fingerprint(bn_net(0.0)) != weights_fingerprint(bn_net(0.5))
    assert weights_fingerprint(FoldedLogits(net)) != weights_fingerprint(FoldedLogits(net, fold="logsumexp"))


def test_same_weights_names_the_first_model_holding_them():
    model, _, _ = tiny_problem()
    models = {"global": model, "robust": copy.deepcopy(model), "natural": one_ulp_up(model),
              "other": copy.deepcopy(model)}
    assert same_weights(models) == {"robust": "global", "other": "global"}
    assert same_weights({"a": one_ulp_up(model), "b": model}) == {}


@pytest.fixture
def counted_evaluations(monkeypatch):
    """The models `evaluate_model` was called on (by identity)."""
    real = robustness.evaluate_model
    attacked = []

    def counting(model, *args, **kwargs):
        attacked.append(model)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(robustness, "evaluate_model", counting)
    return attacked


def test_identical_networks_are_attacked_once_and_a_perturbed_one_on_its_own(counted_evaluations):
    model, x, y = tiny_problem()
    twin, perturbed = copy.deepcopy(model), one_ulp_up(model)
    models = {"global": model, "robust": twin, "natural": perturbed}
    results = evaluate_models(models, x, y, CFG, AttackConfig(eps=EPS), 4)
    assert counted_evaluations == [model, perturbed]  # the twin was never attacked
    assert list(results) == ["global", "robust", "natural"]  # every row, in the method's order
    accuracies = {k: v for k, v in results["global"].items() if not k.startswith("seconds_")}
    assert results["robust"] == {SAME_WEIGHTS: "global", **accuracies}  # no seconds: none were spent on it
    assert SAME_WEIGHTS not in results["natural"] and "seconds_pgd2" in results["natural"]
    alone = evaluate_models({"robust": twin}, x, y, CFG, AttackConfig(eps=EPS), 4)["robust"]
    assert {k: v for k, v in alone.items() if not k.startswith("seconds_")} == accuracies
    # dedupe=False attacks all three.
    counted_evaluations.clear()
    evaluate_models(models, x, y, CFG, AttackConfig(eps=EPS), 4, dedupe=False)
    assert len(counted_evaluations) == 3


def test_autoattack_runs_once_for_identical_networks(tmp_path, monkeypatch):
    model, x, y = tiny_problem(8)
    runs = []

    def fake_autoattack(model, x, y, **kwargs):  # stands in for minutes of attack
        runs.append(kwargs["state_path"])
        return AutoAttackResult(torch.ones(len(x), dtype=torch.bool), {"clean": 1.0, "apgd-ce": 1.0}, False, None)

    monkeypatch.setattr(robustness, "autoattack_robust", fake_autoattack)
    results = evaluate_models({"global": model, "robust": copy.deepcopy(model)}, x, y,
                              EvalConfig(eps=EPS, attacks=("autoattack",)), AttackConfig(eps=EPS), 4,
                              autoattack_states=autoattack_state_files(tmp_path / "eval_last", ["global", "robust"]))
    assert runs == [tmp_path / "eval_last.autoattack-global.json"]  # no state file of its own for the twin
    assert results["robust"] == {SAME_WEIGHTS: "global", "autoattack_after_apgd-ce": 1.0, "autoattack": 1.0}


def test_across_ranks_evaluates_a_duplicate_once(counted_evaluations):
    """`evaluate_across_ranks` (torchrun) finds duplicates once, before its per-attack calls; run here in one
    process, where its reductions are the identity."""
    model, x, y = tiny_problem()
    results = evaluate_across_ranks({"global": model, "robust": copy.deepcopy(model)}, x, y, CFG,
                                    AttackConfig(eps=EPS), 4)
    assert counted_evaluations == [model] * len(CFG.attacks)  # one call per attack, all on the first model
    assert results["robust"][SAME_WEIGHTS] == "global"
    assert results["robust"]["pgd2"] == results["global"]["pgd2"]


def test_results_table_marks_duplicates_and_prints_one_decimal():
    report = {"method": "generalist", "dataset": "fashion-mnist", "num_points": 1000, "norm": "linf", "eps": 0.1,
              "models": {"global": {"clean": 0.68, "pgd20": 0.5559, "seconds_pgd20": 12.5},
                         "robust": {SAME_WEIGHTS: "global", "clean": 0.68, "pgd20": 0.5559}}}
    lines = results_table(report).splitlines()
    assert lines[1].split() == ["model", "clean", "pgd20", "note"]
    assert lines[3].split() == ["global", "68.0", "55.6"]
    assert lines[4].split() == ["robust", "68.0", "55.6", "same", "weights", "as", "global"]
    without = {**report, "models": {"global": report["models"]["global"]}}
    assert "note" not in results_table(without)
