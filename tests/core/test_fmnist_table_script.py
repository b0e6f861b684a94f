"""scripts/fmnist_table.sh and scripts/table_run.sh, with a stand-in interpreter instead of training."""

import subprocess

from tests.table_script_runner import ROOT, run_table_script

RESULT = {"clean": 0.8, "pgd20": 0.6, "cw20": 0.55, "autoattack": 0.45}


def calls_of(tmp_path):
    return (tmp_path / "calls.txt").read_text().splitlines()


def test_trains_and_evaluates_the_four_runs_then_prints_the_table(tmp_path):
    proc = run_table_script("fmnist_table.sh", tmp_path, RESULT)
    assert proc.returncode == 0, proc.stderr
    calls = calls_of(tmp_path)
    for method in ("natural", "pgd_at", "trades", "generalist"):
        run = tmp_path / "table" / method
        train = [c for c in calls if c.startswith("-m generalist_trainer train")
                 and f"configs/fashion_mnist_{method}.yaml" in c]
        assert len(train) == 1 and f"train.out_dir={run}" in train[0] and "train.threads=1" in train[0]
        evals = [c for c in calls if c.startswith(f"-m generalist_trainer eval {run} ")]
        assert len(evals) == 2 and all("--which best" in c for c in evals)
        main = next(c for c in evals if "eval_n1000.json" in c)
        # No adaptive attack for the plain rows; every model of the run (Generalist: all three).
        assert "eval.attacks=[clean, pgd, cw]" in main and "eval.models=[]" in main
        aa = next(c for c in evals if "eval_aa1000.json" in c)
        assert "autoattack" in aa and "eval.num_points=1000" in aa
        assert ("eval.models=[global]" if method == "generalist" else "eval.models=[]") in aa
    assert not any("_ducat" in c for c in calls)
    assert "| pgd_at | global | 80.0 | 60.0 | 55.0 | 45.0 |" in proc.stdout

    # Everything done: a second run calls nothing and prints the same table.
    again = run_table_script("fmnist_table.sh", tmp_path, RESULT)
    assert again.returncode == 0 and len(calls_of(tmp_path)) == len(calls) and again.stdout == proc.stdout


def test_both_tables_in_one_queue_with_runs(tmp_path):
    runs = "generalist pgd_at trades natural generalist_ducat pgd_at_ducat trades_ducat"
    proc = run_table_script("fmnist_table.sh", tmp_path, RESULT, RUNS=runs, JOBS="3")
    assert proc.returncode == 0, proc.stderr
    trained = {c.split("configs/fashion_mnist_")[1].split(".yaml")[0] for c in calls_of(tmp_path)
               if c.startswith("-m generalist_trainer train")}
    assert trained == set(runs.split())
    ducat_evals = [c for c in calls_of(tmp_path) if "_ducat " in c and c.startswith("-m generalist_trainer eval")]
    assert len(ducat_evals) == 6 and all("--which last" in c for c in ducat_evals)


def test_a_failed_run_fails_the_script_after_the_others_finish(tmp_path):
    proc = run_table_script("fmnist_table.sh", tmp_path, RESULT, fail_run="trades")
    assert proc.returncode != 0 and "failed" in proc.stderr
    # The other runs were evaluated and are in the table; the failed one shows dashes.
    assert "| natural | global | 80.0 |" in proc.stdout and "| generalist | global | 80.0 |" in proc.stdout
    assert not (tmp_path / "table" / "trades" / "eval_n1000.json").exists()


def test_an_unknown_run_is_refused_with_its_name():
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "table_run.sh"), "pgd_att"], capture_output=True,
                          text=True, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2 and "configs/fashion_mnist_pgd_att.yaml" in proc.stderr
