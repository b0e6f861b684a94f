"""scripts/ducat_table.sh and scripts/print_ducat_table.py, with a stand-in interpreter instead of training."""

import json
import sys
from pathlib import Path

from tests.table_script_runner import ROOT, run_table_script

sys.path.insert(0, str(ROOT / "scripts"))
import print_ducat_table  # noqa: E402

RESULT = {"clean": 0.8, "pgd20": 0.6, "cw20": 0.55, "pgd_lse20": 0.5, "autoattack": 0.45}


def run_script(tmp_path: Path, fail_run: str = "no-such-run"):
    return run_table_script("ducat_table.sh", tmp_path, RESULT, fail_run)


def test_trains_and_evaluates_the_three_ducat_rows_with_the_adaptive_attack(tmp_path):
    proc = run_script(tmp_path)
    assert proc.returncode == 0, proc.stderr
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    for method in ("pgd_at", "trades", "generalist"):
        train = [c for c in calls if c.startswith("-m generalist_trainer train") and f"{method}_ducat.yaml" in c]
        assert len(train) == 1 and f"train.out_dir={tmp_path / 'table' / (method + '_ducat')}" in train[0]
        run = tmp_path / "table" / f"{method}_ducat"
        evals = [c for c in calls if c.startswith(f"-m generalist_trainer eval {run} ")]
        assert len(evals) == 2
        assert any("eval.num_points=1000" in c and "pgd_lse" in c and "eval_n1000.json" in c for c in evals)
        assert any("eval.num_points=1000" in c and "autoattack" in c and "eval_aa1000.json" in c for c in evals)
        # DUCAT switches on in the last epoch: the best-on-validation checkpoint may predate it.
        assert all("--which last" in c for c in evals)
    # The plain rows come from scripts/fmnist_table.sh: never trained here, listed as missing.
    assert not any("fashion_mnist_pgd_at.yaml" in c for c in calls)
    assert "| PGD-AT + DUCAT | 80.0 | 60.0 | 55.0 | 50.0 | 45.0 |" in proc.stdout
    assert "| PGD-AT | - | - | - | - | - |" in proc.stdout
    assert "fmnist_table.sh" in proc.stderr and "pgd_at/eval_n1000.json" in proc.stderr

    # A second run finds everything done and calls nothing.
    again = run_script(tmp_path)
    assert again.returncode == 0 and len((tmp_path / "calls.txt").read_text().splitlines()) == len(calls)


def test_a_failed_lane_fails_the_script_after_printing_the_table(tmp_path):
    proc = run_script(tmp_path, fail_run="trades_ducat")
    assert proc.returncode != 0
    assert "| PGD-AT + DUCAT | 80.0 |" in proc.stdout and "| TRADES + DUCAT | - |" in proc.stdout
    assert "failed" in proc.stderr


def write_eval(folder: Path, name: str, results: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps({"models": {"global": results, "robust": {"clean": 0.0}}}))


def test_plain_rows_read_n_a_in_the_adaptive_column(tmp_path):
    plain = {k: v for k, v in RESULT.items() if k != "pgd_lse20"}
    for folder in ("pgd_at", "trades", "generalist"):
        write_eval(tmp_path / folder, "eval_n500.json", plain)
        write_eval(tmp_path / folder, "eval_aa200.json", {"clean": 0.8, "autoattack": 0.4})
    write_eval(tmp_path / "generalist_ducat", "eval_n500.json", RESULT)
    lines, missing = print_ducat_table.table(tmp_path, "500", "200")
    assert lines[0].startswith("| method | clean (500) | PGD-20 (500) | CW-20 (500) | adaptive pgd_lse-20 (500) | "
                               "AutoAttack (200) |")
    rows = {line.split(" | ")[0][2:]: line for line in lines[2:8]}
    assert rows["PGD-AT"] == "| PGD-AT | 80.0 | 60.0 | 55.0 | n/a | 40.0 |"
    assert rows["Generalist (global)"] == "| Generalist (global) | 80.0 | 60.0 | 55.0 | n/a | 40.0 |"
    # The shipped model (first in the file), never the robust expert listed after it.
    assert rows["Generalist + DUCAT (global)"] == "| Generalist + DUCAT (global) | 80.0 | 60.0 | 55.0 | 50.0 | - |"
    assert rows["TRADES + DUCAT"] == "| TRADES + DUCAT | - | - | - | - | - |"
    assert any("generalist_ducat/eval_aa200.json" in m for m in missing)
    assert not any("/pgd_at/" in m for m in missing)
    # A plain run that was evaluated with pgd_lse shows its number.
    write_eval(tmp_path / "pgd_at", "eval_n500.json", RESULT)
    lines, _ = print_ducat_table.table(tmp_path, "500", "200")
    assert "| PGD-AT | 80.0 | 60.0 | 55.0 | 50.0 | 40.0 |" in lines
