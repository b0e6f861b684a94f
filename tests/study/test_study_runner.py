"""`python -m generalist_trainer study`: units run in order by a stand-in interpreter, finished ones skipped, stopped
ones resumed, a fresh machine continuing from committed results, failures contained."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from generalist_trainer.trainer.errors import ConfigError
from generalist_trainer.trainer.study import StudyRunner, load_plan

# The stand-in for `python -m generalist_trainer`: records each call; a training writes DONE, config.yaml and epochs.csv
# (its losses from $LOSS so a retrain can differ), an evaluation writes the JSON it is asked for.
FAKE_PY = textwrap.dedent(r'''
    import json, os, sys
    from pathlib import Path
    args = sys.argv[1:]
    assert args[:2] == ["-m", "generalist_trainer"], args
    with open(os.environ["CALLS"], "a") as f:
        f.write(" ".join(args[2:]) + "\n")
    cmd, rest = args[2], args[3:]
    if cmd == "train":
        run = Path(rest[rest.index("--resume") + 1]) if "--resume" in rest else Path(
            next(a for a in rest if a.startswith("train.out_dir=")).split("=", 1)[1])
        if os.environ.get("FAIL_RUN") and run.name == os.environ["FAIL_RUN"]:
            sys.exit(3)
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.yaml").write_text("method: {name: x}\n")
        (run / "epochs.csv").write_text("epoch,train_loss,val_clean,val_pgd10,val_score,epoch_seconds\n"
                                        f"1,{os.environ.get('LOSS', '1.5')},0.7,0.5,1.2,60\n")
        (run / "last.pt").write_text("x")
        (run / "DONE").write_text("")
    elif cmd == "eval":
        out = Path(rest[rest.index("--out") + 1])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"models": {"model": {"clean": 0.8, "pgd20": 0.6}}}))
''')

PLAN = """
name: toy
runs_dir: runs/study
results_dir: results/study
workers: 2
overrides: [train.epochs=1]
runs:
  - {name: pgd_at, config: configs/fashion_mnist_pgd_at.yaml, seeds: [0, 1]}
  - {name: trades, config: configs/fashion_mnist_trades.yaml, seeds: [0]}
evaluations:
  - {name: test, which: last, overrides: [eval.num_points=10]}
  - {name: aa, which: last, seeds: [0], runs: [pgd_at], overrides: ["eval.attacks=[autoattack]"]}
summary:
  baseline: pgd_at
  columns: [{name: clean, eval: test, key: clean}, {name: val_pgd10, key: val_pgd10}]
"""


@pytest.fixture
def study(tmp_path, monkeypatch):
    (tmp_path / "plan.yaml").write_text(PLAN)
    fake = tmp_path / "fake_trainer.py"
    fake.write_text(FAKE_PY)
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("CALLS", str(calls))
    monkeypatch.setattr("generalist_trainer.trainer.study.runner.POLL_SECONDS", 0.05)

    def run(**kwargs) -> tuple[int, list[str]]:
        before = calls.read_text().splitlines() if calls.exists() else []
        runner = StudyRunner(load_plan(tmp_path / "plan.yaml"), root=tmp_path, python=sys.executable,
                             echo=lambda line: None, **kwargs)
        runner.python = sys.executable
        # The stand-in script replaces "-m generalist_trainer": run it with the same argv shape.
        original = runner.command
        runner.command = lambda unit: [sys.executable, str(fake), *original(unit)[1:]]
        status = runner.run()
        after = calls.read_text().splitlines() if calls.exists() else []
        return status, after[len(before):]

    return tmp_path, run


def test_runs_every_unit_once_trainings_first_then_skips_them(study):
    root, run = study
    status, calls = run(workers=1)  # one worker: the start order is the plan's order (two would race to log)
    assert status == 0
    kinds = [c.split()[0] for c in calls]
    assert kinds == ["train"] * 3 + ["eval"] * 4  # 3 trainings, 3 "test" evals, 1 "aa" eval (seed 0 of pgd_at)
    assert sum("eval.attacks=[autoattack]" in c for c in calls) == 1
    results = root / "results/study"
    for run_name in ("pgd_at_s0", "pgd_at_s1", "trades_s0"):
        assert (results / run_name / "epochs.csv").is_file()
        assert (results / run_name / "trained.json").is_file()
        assert (results / run_name / "eval_test.json").is_file()
    assert (results / "pgd_at_s0/eval_aa.json").is_file() and not (results / "pgd_at_s1/eval_aa.json").exists()
    assert run() == (0, [])  # everything done: nothing runs


def test_a_missing_evaluation_reruns_alone(study):
    root, run = study
    run()
    (root / "results/study/trades_s0/eval_test.json").unlink()
    status, calls = run()
    assert status == 0 and len(calls) == 1 and calls[0].startswith("eval ") and "trades_s0" in calls[0]


def test_a_stopped_training_resumes_from_its_checkpoint(study):
    root, run = study
    run_dir = root / "runs/study/pgd_at_s1"
    run_dir.mkdir(parents=True)
    (run_dir / "last.pt").write_text("partial")  # a checkpoint but no DONE: the training was stopped
    status, calls = run()
    assert status == 0
    assert f"train --resume {run_dir} --no-eval" in calls


def test_a_fresh_machine_continues_from_committed_results(study):
    root, run = study
    run()
    import shutil

    shutil.rmtree(root / "runs")  # a new machine: the results were committed, the checkpoints were not
    assert run() == (0, [])  # every evaluation is in the results: nothing to retrain
    (root / "results/study/pgd_at_s0/eval_aa.json").unlink()
    status, calls = run()
    assert status == 0
    assert [c.split()[0] for c in calls] == ["train", "eval"]  # retrained (deterministic), then evaluated
    assert "pgd_at_s0" in calls[0] and "eval_aa.json" in calls[1]


def test_a_retrain_that_differs_from_committed_results_fails_and_is_not_evaluated(study, monkeypatch):
    root, run = study
    run()
    import shutil

    shutil.rmtree(root / "runs")
    (root / "results/study/pgd_at_s0/eval_aa.json").unlink()
    monkeypatch.setenv("LOSS", "1.25")  # not what the committed epochs.csv holds
    status, calls = run()
    assert status == 1
    assert [c.split()[0] for c in calls] == ["train"]
    assert "1.5" in (root / "results/study/pgd_at_s0/epochs.csv").read_text()  # the committed file is kept


def test_a_failed_training_blocks_only_its_own_evaluations(study, monkeypatch):
    root, run = study
    monkeypatch.setenv("FAIL_RUN", "pgd_at_s1")
    status, calls = run()
    assert status == 1
    assert not any(c.startswith("eval ") and "pgd_at_s1" in c for c in calls)
    assert sum(c.startswith("eval ") for c in calls) == 3  # pgd_at_s0 (test, aa) and trades_s0 (test)
    monkeypatch.delenv("FAIL_RUN")
    status, calls = run(workers=1)  # fixed: the next call does only what is left
    assert status == 0 and [c.split()[0] for c in calls] == ["train", "eval"]


def test_workers_never_exceed_the_plan(study, monkeypatch):
    root, run = study
    seen = []
    real_popen = subprocess.Popen

    class CountingPopen(real_popen):
        live = 0

        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            CountingPopen.live += 1
            seen.append(CountingPopen.live)

        def poll(self):
            code = super().poll()
            if code is not None and not getattr(self, "_counted", False):
                self._counted = True
                CountingPopen.live -= 1
            return code

    monkeypatch.setattr("generalist_trainer.trainer.study.runner.subprocess.Popen", CountingPopen)
    run(workers=1)
    assert max(seen) == 1


@pytest.mark.parametrize(("text", "field"), [
    ("name: x\nruns_dir: r\nresults_dir: s\n", "runs"),
    ("name: x\nruns_dir: r\nresults_dir: s\nruns: [{name: a, config: c.yaml}]\nbogus: 1\n", "bogus"),
    ("name: x\nruns_dir: r\nresults_dir: s\nruns: [{name: a, config: c.yaml}]\n"
     "evaluations: [{name: e, which: middle}]\n", "evaluations[0].which"),
    ("name: x\nruns_dir: r\nresults_dir: s\nruns: [{name: a, config: c.yaml}]\nsummary: {baseline: b}\n",
     "summary.baseline"),
    ("name: x\nruns_dir: r\nresults_dir: s\nruns: [{name: a, config: c.yaml, seeds: [zero]}]\n", "runs[0].seeds"),
    ("name: x\nruns_dir: r\nresults_dir: s\nworkers: 0\nruns: [{name: a, config: c.yaml}]\n", "workers"),
    ("runs: [\n", "not a readable YAML file"),
])
def test_a_bad_plan_is_one_error_naming_the_file_and_field(tmp_path, text, field):
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_plan(path)
    assert str(path) in str(err.value) and field in str(err.value)


def test_cli_dry_run_and_bad_plan_exit_codes(tmp_path):
    (tmp_path / "plan.yaml").write_text(PLAN)
    root = Path(__file__).resolve().parents[2]
    ok = subprocess.run([sys.executable, "-m", "generalist_trainer", "study", str(tmp_path / "plan.yaml"), "--dry-run"],
                        cwd=root, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    lines = ok.stdout.splitlines()
    assert len(lines) == 7 and all(line.startswith("run ") for line in lines)
    (tmp_path / "bad.yaml").write_bytes(b"\xff\xfe not yaml")
    bad = subprocess.run([sys.executable, "-m", "generalist_trainer", "study", str(tmp_path / "bad.yaml")], cwd=root,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "bad.yaml" in bad.stderr


def test_summary_json_is_written_from_results(study):
    root, run = study
    run()
    from generalist_trainer.trainer.study import write_summary

    summary = write_summary(load_plan(root / "plan.yaml"), root)
    data = json.loads((root / "results/study/summary.json").read_text())
    assert data["methods"]["pgd_at"]["columns"]["clean"]["n"] == 2
    assert data["methods"]["pgd_at"]["columns"]["clean"]["mean"] == pytest.approx(80.0)
    assert data["methods"]["trades"]["vs_baseline"]["clean"]["mean"] == pytest.approx(0.0)
    assert summary["methods"]["trades"]["columns"]["val_pgd10"]["mean"] == pytest.approx(50.0)


def test_summary_folder_keeps_two_plans_on_one_results_folder_apart(study):
    root, run = study
    run()
    from generalist_trainer.trainer.study import write_summary

    write_summary(load_plan(root / "plan.yaml"), root)
    core = (root / "results/study/summary.json").read_text()
    (root / "ext.yaml").write_text(PLAN.replace("name: toy", "name: ext").replace(
        "  baseline: pgd_at\n", "  baseline: pgd_at\n  folder: results/study/ext\n"))
    write_summary(load_plan(root / "ext.yaml"), root)
    assert (root / "results/study/summary.json").read_text() == core
    assert json.loads((root / "results/study/ext/summary.json").read_text())["study"] == "ext"
    (root / "bad.yaml").write_text(PLAN.replace("  baseline: pgd_at\n", "  baseline: pgd_at\n  folder: [x]\n"))
    with pytest.raises(ConfigError, match="summary.folder"):
        load_plan(root / "bad.yaml")


BEST_EVAL = "  - {name: test_best, which: best, same_as: test, overrides: [eval.num_points=10]}\n"
BEST_PLAN = PLAN.replace("  - {name: aa, which: last", BEST_EVAL + "  - {name: aa, which: last")


@pytest.mark.parametrize("same", [True, False])
def test_best_equal_to_last_reuses_the_last_checkpoints_results(study, monkeypatch, same):
    root, run = study
    (root / "plan.yaml").write_text(BEST_PLAN)
    monkeypatch.setattr("generalist_trainer.trainer.study.runner.same_networks", lambda a, b: same)
    status, calls = run()
    assert status == 0
    best_calls = [c for c in calls if "eval_test_best.json" in c]
    assert len(best_calls) == (0 if same else 3)
    report = json.loads((root / "results/study/pgd_at_s0/eval_test_best.json").read_text())
    assert report["models"]["model"]["clean"] == 0.8
    assert ("same_networks_as" in report) == same


def test_same_as_must_name_an_earlier_last_evaluation_with_the_same_overrides(tmp_path):
    bad = BEST_PLAN.replace("same_as: test, overrides: [eval.num_points=10]", "same_as: test, overrides: []")
    (tmp_path / "plan.yaml").write_text(bad)
    with pytest.raises(ConfigError, match=r"evaluations\[1\].same_as"):
        load_plan(tmp_path / "plan.yaml")


def test_same_networks_compares_checkpoints_exactly(tmp_path):
    import torch

    from generalist_trainer.trainer.checkpoint import load_checkpoint, save_checkpoint
    from generalist_trainer.trainer.study.runner import same_networks
    from generalist_trainer.trainer.training import train
    from tests.core.test_checkpoint_resume import tiny_config

    result = train(tiny_config(tmp_path, "train.epochs=1"))
    last = result.run_dir / "last.pt"
    state = load_checkpoint(last)
    save_checkpoint(tmp_path / "copy.pt", state)
    assert same_networks(last, tmp_path / "copy.pt")
    name, net = next(iter(state["networks"].items()))
    key = next(k for k, v in net.items() if v.is_floating_point())
    net[key] = net[key] + torch.finfo(net[key].dtype).eps * net[key].abs().max()  # one ulp-sized change
    save_checkpoint(tmp_path / "changed.pt", state)
    assert not same_networks(last, tmp_path / "changed.pt")
    assert not same_networks(last, tmp_path / "missing.pt")


def test_by_seed_order_finishes_each_seed_before_the_next_and_after_grid_last(study):
    root, run = study
    plan = (root / "plan.yaml").read_text().replace("workers: 2", "workers: 2\norder: by_seed")
    (root / "plan.yaml").write_text(plan.replace("seeds: [0], runs: [pgd_at]", "seeds: [0], after_grid: true, "
                                                                              "runs: [pgd_at]"))
    status, calls = run(workers=1)
    assert status == 0
    started = [(c.split()[0], next(p for p in ("pgd_at_s0", "pgd_at_s1", "trades_s0") if p in c),
                "aa" if "eval_aa.json" in c else "") for c in calls]
    assert started == [("train", "pgd_at_s0", ""), ("train", "trades_s0", ""),
                       ("eval", "pgd_at_s0", ""), ("eval", "trades_s0", ""),
                       ("train", "pgd_at_s1", ""), ("eval", "pgd_at_s1", ""),
                       ("eval", "pgd_at_s0", "aa")]


def test_an_unknown_order_is_a_one_line_error(study):
    root, _ = study
    (root / "plan.yaml").write_text((root / "plan.yaml").read_text().replace("workers: 2", "workers: 2\norder: x"))
    with pytest.raises(ConfigError, match="'order' = 'x': expected one of"):
        load_plan(root / "plan.yaml")
