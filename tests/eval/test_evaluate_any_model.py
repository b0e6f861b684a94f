"""`gt.evaluate` on a model that is not the trainer's (a plain nn.Sequential): resumable AutoAttack stopped and
resumed gives one uninterrupted call's result, the arguments reach the evaluation code, bad inputs are one-line
errors, and under torchrun the ranks share the work and return the same accuracies."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import generalist_trainer as gt
from generalist_trainer.trainer.config import AttackConfig, EvalConfig
from generalist_trainer.trainer.errors import ConfigError
from generalist_trainer.trainer.eval import autoattack_resumable
from generalist_trainer.trainer.eval.autoattack_adapter import run_autoattack
from generalist_trainer.trainer.eval.robustness import evaluate_model
from tests.distributed.test_ddp_gloo import torchrun
from tests.eval.aa_shard_worker import EPS, tiny_problem
from tests.eval.evaluate_any_worker import SETTINGS
from tests.eval.test_autoattack_resumable import short_attacks, stop_at_unit  # noqa: F401 (fixture)

pytest.importorskip("pyautoattack")

AA = {"eps": EPS, "attacks": ("clean", "autoattack"), "batch_size": 4, "progress": False, "sanity_checks": False}


def accuracies(result: dict) -> dict:
    return {k: v for k, v in result.items() if not k.startswith("seconds_")}


@pytest.mark.usefixtures("short_attacks")
def test_a_plain_sequential_stopped_in_autoattack_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    model, x, y = tiny_problem()
    assert type(model) is nn.Sequential
    real_unit = autoattack_resumable._attack_unit
    units = {"uninterrupted": 0, "resumed": 0}

    def counted(key):
        def unit(*args):
            units[key] += 1
            return real_unit(*args)
        return unit

    monkeypatch.setattr(autoattack_resumable, "_attack_unit", counted("uninterrupted"))
    uninterrupted = gt.evaluate(model, x, y, **AA)
    # The official one-shot AutoAttack on the same points: the same robust accuracy.
    x_adv = run_autoattack(model, x, y, eps=EPS, norm="linf", batch_size=4, seed=0)
    with torch.no_grad():
        assert uninterrupted["autoattack"] == float(model(x_adv).argmax(1).eq(y).float().mean())
    assert 0 < uninterrupted["autoattack"] < uninterrupted["clean"]  # the attacks really had work to do

    state_file = tmp_path / "aa.json"
    die_at = 4  # the 4th attacked batch, inside APGD-CE (its 5 batches: tests/eval/test_autoattack_resumable.py)
    monkeypatch.setattr(autoattack_resumable, "_attack_unit", real_unit)
    stop_at_unit(monkeypatch, die_at)
    with pytest.raises(KeyboardInterrupt):
        gt.evaluate(model, x, y, state_file=state_file, **AA)
    saved = json.loads(state_file.read_text())
    assert saved["attack_index"] == 0 and len(saved["units_done"]) == die_at - 1  # stopped part-way, progress kept

    monkeypatch.setattr(autoattack_resumable, "_attack_unit", counted("resumed"))
    resumed = gt.evaluate(model, x, y, state_file=state_file, **AA)
    assert accuracies(resumed) == accuracies(uninterrupted)
    assert units["resumed"] == units["uninterrupted"] - (die_at - 1)  # the finished units were not attacked again


def test_the_arguments_reach_the_evaluation_code_and_the_model_keeps_its_mode():
    model, x, y = tiny_problem()
    dropout = nn.Sequential(model[0], nn.Dropout(0.5), model[1]).train()
    result = gt.evaluate(dropout, x, y, eps=EPS, attacks=("clean", "pgd", "cw", "pgd_lse"), pgd_steps=3,
                              cw_steps=2, step_ratio=2.0, seed=5, batch_size=7, progress=False)
    direct = evaluate_model(dropout, x, y, EvalConfig(attacks=("clean", "pgd", "cw", "pgd_lse"), pgd_steps=3,
                                                      cw_steps=2, step_ratio=2.0, seed=5), AttackConfig(eps=EPS), 7)
    assert accuracies(result) == accuracies(direct)
    assert set(accuracies(result)) == {"clean", "pgd3", "cw2", "pgd_lse3"}
    assert dropout.training and dropout[1].training  # evaluated in eval mode, its own flags restored
    with torch.no_grad():
        assert result["clean"] == float(model(x).argmax(1).eq(y).float().mean())  # dropout was off


def test_bad_inputs_are_one_line_errors():
    model, x, y = tiny_problem()
    with pytest.raises(ValueError, match=r"x spans \[.*\]; expected pixels in \[0, 1\]"):
        gt.evaluate(model, x * 2 - 0.5, y, eps=EPS, attacks=("clean",))
    with pytest.raises(ValueError, match=r"y is torch.float32 of shape \(20,\); expected integer labels"):
        gt.evaluate(model, x, y.float(), eps=EPS, attacks=("clean",))
    with pytest.raises(ValueError, match=r"expected floats \(N, C, H, W\)"):
        gt.evaluate(model, x.flatten(1), y, eps=EPS, attacks=("clean",))
    with pytest.raises(ConfigError, match="config field 'attack.norm' = 'l1'"):
        gt.evaluate(model, x, y, eps=EPS, norm="l1", attacks=("clean",))
    with pytest.raises(ConfigError, match="config field 'eval.attacks'"):
        gt.evaluate(model, x, y, eps=EPS, attacks=("fgsm",))
    with pytest.raises(ConfigError, match="config field 'data.eval_batch_size' = 0"):
        gt.evaluate(model, x, y, eps=EPS, attacks=("clean",), batch_size=0)


@pytest.mark.usefixtures("short_attacks")
def test_two_torchrun_ranks_share_the_points_and_return_the_same_accuracies(tmp_path):
    torchrun("-m", "tests.eval.evaluate_any_worker", str(tmp_path), timeout=300)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert accuracies(ranks[0]["result"]) == accuracies(ranks[1]["result"])
    # Clean and AutoAttack judge the same points as one process (AutoAttack's units are the same batches, shared
    # round robin); PGD's random starts of a share differ from one process's, so only its range is checked.
    model, x, y = tiny_problem()
    alone = gt.evaluate(model, x, y, **SETTINGS)
    for key in ("clean", "autoattack", "autoattack_after_apgd-ce", "autoattack_after_square"):
        assert ranks[0]["result"][key] == pytest.approx(alone[key], abs=1e-6), key  # exact counts, float32 mean
    assert 0.0 <= ranks[0]["result"]["pgd2"] <= ranks[0]["result"]["clean"]
    assert (tmp_path / "state.json.rank0").is_file() and (tmp_path / "state.json.rank1").is_file()
