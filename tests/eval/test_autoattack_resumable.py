"""The resumable AutoAttack driver: same flags as one uninterrupted official run, resume, refusal, RNG,
and two ranks sharing the work."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("pyautoattack")

from generalist_trainer.trainer.errors import CheckpointError  # noqa: E402
from generalist_trainer.trainer.eval import autoattack_adapter, autoattack_resumable  # noqa: E402
from generalist_trainer.trainer.eval.autoattack_adapter import run_autoattack  # noqa: E402
from generalist_trainer.trainer.eval.autoattack_resumable import autoattack_robust  # noqa: E402
from tests.eval.aa_shard_worker import EPS, SETTINGS, shorten, tiny_problem  # noqa: E402

BATCH = SETTINGS["batch_size"]


@pytest.fixture(autouse=True)
def short_attacks(monkeypatch):
    """The official attacks with fewer iterations: the schedule, not the attack strength, is under test.

    Both the one-shot reference and the resumable driver build their attacks through this same factory.
    """
    real_build = autoattack_adapter.build_autoattack

    def build_short(*args, **kwargs):
        return shorten(real_build(*args, **kwargs))

    monkeypatch.setattr(autoattack_adapter, "build_autoattack", build_short)
    monkeypatch.setattr(autoattack_resumable, "build_autoattack", build_short)


@pytest.fixture
def reference(short_attacks):
    model, x, y = tiny_problem()
    x_adv = run_autoattack(model, x, y, eps=EPS, norm="linf", batch_size=BATCH, seed=0)
    with torch.no_grad():
        return model(x_adv).argmax(1).eq(y)


def test_matches_one_uninterrupted_official_run(reference):
    model, x, y = tiny_problem()
    result = autoattack_robust(model, x, y, **SETTINGS)
    assert torch.equal(result.robust, reference)
    assert not result.robust[:3].any()
    assert 0 < int(result.robust.sum()) < int(reference.numel())  # the problem really exercises the attacks
    assert set(result.stage_accuracy) == {"clean", "apgd-ce", "apgd-t", "fab-t", "square"}
    assert result.stage_accuracy["square"] == pytest.approx(float(reference.float().mean()))


def stop_at_unit(monkeypatch, die_at: int):
    """Make the die_at-th attacked unit raise KeyboardInterrupt (a stop mid-work); returns the call counter,
    the real unit function and the dying one."""
    real_unit = autoattack_resumable._attack_unit
    calls = {"n": 0}

    def dying_unit(*args):
        calls["n"] += 1
        if calls["n"] == die_at:
            raise KeyboardInterrupt
        return real_unit(*args)

    monkeypatch.setattr(autoattack_resumable, "_attack_unit", dying_unit)
    return calls, real_unit, dying_unit


# 17 points are correct at first (3 are made wrong) and 4 survive APGD-CE, so the units are APGD-CE 5,
# then APGD-T, FAB-T and Square 1 each: call 4 is inside APGD-CE, call 7 is FAB-T's, after two finished attacks.
@pytest.mark.parametrize("die_at, attack_index, units_done", [(4, 0, 3), (7, 2, 0)], ids=["in_apgd_ce", "in_fab_t"])
def test_interrupted_run_resumes_to_the_same_flags(tmp_path, monkeypatch, reference, die_at, attack_index,
                                                   units_done):
    model, x, y = tiny_problem()
    state_file = tmp_path / "aa_state.json"
    calls, real_unit, dying_unit = stop_at_unit(monkeypatch, die_at)
    with pytest.raises(KeyboardInterrupt):
        autoattack_robust(model, x, y, state_path=state_file, **SETTINGS)
    saved = json.loads(state_file.read_text())
    assert saved["attack_index"] == attack_index and len(saved["units_done"]) == units_done  # progress was kept

    monkeypatch.setattr(autoattack_resumable, "_attack_unit", real_unit)
    counted = {"n": 0}

    def counting_unit(*args):
        counted["n"] += 1
        return real_unit(*args)

    monkeypatch.setattr(autoattack_resumable, "_attack_unit", counting_unit)
    result = autoattack_robust(model, x, y, state_path=state_file, **SETTINGS)
    assert result.resumed
    assert torch.equal(result.robust, reference)
    uninterrupted = {"n": 0}

    def counting_fresh(*args):
        uninterrupted["n"] += 1
        return real_unit(*args)

    monkeypatch.setattr(autoattack_resumable, "_attack_unit", counting_fresh)
    autoattack_robust(model, x, y, **SETTINGS)
    assert counted["n"] == uninterrupted["n"] - (die_at - 1)  # the finished units were not redone

    # A finished state answers again without attacking.
    monkeypatch.setattr(autoattack_resumable, "_attack_unit", dying_unit)
    calls["n"] = -100
    assert torch.equal(autoattack_robust(model, x, y, state_path=state_file, **SETTINGS).robust, reference)
    assert calls["n"] == -100


def test_state_of_another_evaluation_is_refused_not_discarded(tmp_path):
    model, x, y = tiny_problem(8)
    state_file = tmp_path / "aa_state.json"
    autoattack_robust(model, x, y, state_path=state_file, **SETTINGS)
    before = state_file.read_text()
    with pytest.raises(CheckpointError, match="eps"):
        autoattack_robust(model, x, y, state_path=state_file, **{**SETTINGS, "eps": 0.1})
    with torch.no_grad():
        model[1].weight.mul_(2.0)
    with pytest.raises(CheckpointError, match="model_sha256"):
        autoattack_robust(model, x, y, state_path=state_file, **SETTINGS)
    assert state_file.read_text() == before


def test_unreadable_state_names_the_file(tmp_path):
    model, x, y = tiny_problem(8)
    state_file = tmp_path / "aa_state.json"
    state_file.write_text("{not json")
    with pytest.raises(CheckpointError, match="aa_state.json"):
        autoattack_robust(model, x, y, state_path=state_file, **SETTINGS)
    state_file.write_text("[1, 2]")  # valid JSON, but not a state object
    with pytest.raises(CheckpointError, match="aa_state.json"):
        autoattack_robust(model, x, y, state_path=state_file, **SETTINGS)


def test_global_rng_untouched():
    model, x, y = tiny_problem(8)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    autoattack_robust(model, x, y, **SETTINGS)
    assert torch.equal(torch.get_rng_state(), before)


def test_two_ranks_share_the_work_and_agree(tmp_path, reference):
    """Under a 2-process gloo group each rank attacks every other unit; merged flags equal one process."""
    import torch.multiprocessing as mp

    from tests.eval.aa_shard_worker import sharded_run

    mp.spawn(sharded_run, args=(2, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for saved in ranks:
        assert torch.equal(saved["robust"], reference)
    assert ranks[0]["stages"] == ranks[1]["stages"]
    states = [json.loads((tmp_path / f"state.json.rank{r}").read_text()) for r in range(2)]
    assert all(st["attack_index"] == len(st["attacks"]) for st in states)


def test_two_ranks_resume_when_one_stopped_a_merge_behind(tmp_path, reference):
    """Both ranks stopped after APGD-CE's merge, rank 1 before saving it: restarted, rank 1 adopts rank 0's
    merged flags instead of redoing APGD-CE, and both end with the uninterrupted flags."""
    import torch.multiprocessing as mp

    from tests.eval.aa_shard_worker import sharded_interrupted_run

    with pytest.raises(Exception, match="Stop"):
        mp.spawn(sharded_interrupted_run, args=(2, str(tmp_path), "stop"), nprocs=2, join=True)
    stopped = [json.loads((tmp_path / f"state.json.rank{r}").read_text()) for r in range(2)]
    assert [st["attack_index"] for st in stopped] == [1, 0]  # rank 1's file is one merge behind
    assert stopped[1]["units_done"] == [1, 3]  # ... with all its APGD-CE units done (5 units, round robin)

    mp.spawn(sharded_interrupted_run, args=(2, str(tmp_path), "resume"), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"resumed_rank{r}.pt") for r in range(2)]
    for saved in ranks:
        assert saved["resumed"] and torch.equal(saved["robust"], reference)
        assert "apgd-ce" in saved["stages"]
    assert ranks[0]["stages"] == ranks[1]["stages"]
    # No APGD-CE unit was attacked again; the later attacks have one unit each, which goes to rank 0.
    assert ranks[0]["attacked"] == ["apgd-t", "fab-t", "square"] and ranks[1]["attacked"] == []


def test_stage_seconds_add_up_across_an_interrupted_and_a_resumed_session(tmp_path, monkeypatch):
    # A clock that advances one tick per reading: every finished unit (and the clean pass) costs one tick, so the
    # expected seconds are unit counts. Units: clean pass 1, APGD-CE 5, then one each (see the test above).
    ticks = iter(range(10_000))
    monkeypatch.setattr(autoattack_resumable, "_clock", lambda: float(next(ticks)))
    model, x, y = tiny_problem()
    state_file = tmp_path / "aa_state.json"
    _, real_unit, _ = stop_at_unit(monkeypatch, 7)  # inside FAB-T: this session finishes APGD-CE and APGD-T
    with pytest.raises(KeyboardInterrupt):
        autoattack_robust(model, x, y, state_path=state_file, **SETTINGS)
    monkeypatch.setattr(autoattack_resumable, "_attack_unit", real_unit)
    result = autoattack_robust(model, x, y, state_path=state_file, **SETTINGS)
    assert result.resumed
    assert result.stage_seconds == {"clean": 1.0, "apgd-ce": 5.0, "apgd-t": 1.0, "fab-t": 1.0, "square": 1.0}


def test_state_file_from_before_timings_resumes_without_claiming_a_total(tmp_path):
    model, x, y = tiny_problem(8)
    state_file = tmp_path / "aa_state.json"
    first = autoattack_robust(model, x, y, state_path=state_file, **SETTINGS)
    assert first.stage_seconds is not None and "clean" in first.stage_seconds
    legacy = json.loads(state_file.read_text())
    del legacy["stage_seconds"]
    state_file.write_text(json.dumps(legacy))
    again = autoattack_robust(model, x, y, state_path=state_file, **SETTINGS)
    assert again.resumed and torch.equal(again.robust, first.robust)
    assert again.stage_seconds is None  # the earlier sessions' time is unknown, so none is reported


def test_evaluation_reports_each_stage_and_the_all_sessions_total(tmp_path):
    from generalist_trainer.trainer.config import AttackConfig, EvalConfig
    from generalist_trainer.trainer.eval.robustness import evaluate_model

    model, x, y = tiny_problem()
    ecfg = EvalConfig(num_points=len(x), eps=EPS, attacks=("autoattack",), autoattack_resume=True)
    result = evaluate_model(model, x, y, ecfg, AttackConfig(), BATCH, autoattack_state=tmp_path / "aa.json")
    stages = {k.removeprefix("seconds_autoattack_") for k in result
              if k.startswith("seconds_autoattack_") and k != "seconds_autoattack_all_sessions"}
    assert stages == {"clean", "apgd-ce", "apgd-t", "fab-t", "square"}
    per_stage = sum(result[f"seconds_autoattack_{s}"] for s in stages)
    assert result["seconds_autoattack_all_sessions"] == pytest.approx(per_stage, abs=0.05)
    # Nothing left to do on a second call: its own wall time is small, the total still covers the first one.
    again = evaluate_model(model, x, y, ecfg, AttackConfig(), BATCH, autoattack_state=tmp_path / "aa.json")
    assert again["seconds_autoattack_all_sessions"] == result["seconds_autoattack_all_sessions"]
    assert again["autoattack"] == result["autoattack"]


def test_apgd_version_is_standard_cut_after_apgd_t():
    """eval.autoattack_version "apgd": standard's APGD-CE and APGD-T with standard's settings, so its stage
    accuracies equal the standard run's first two stages and its result is standard's after APGD-T."""
    model, x, y = tiny_problem()
    settings = {**SETTINGS, "version": "standard"}
    standard = autoattack_robust(model, x, y, **settings)
    cut = autoattack_robust(model, x, y, **{**settings, "version": "apgd"})
    assert list(cut.stage_accuracy) == ["clean", "apgd-ce", "apgd-t"]
    for stage in ("clean", "apgd-ce", "apgd-t"):
        assert cut.stage_accuracy[stage] == standard.stage_accuracy[stage]
    assert cut.robust.float().mean() >= standard.robust.float().mean()
