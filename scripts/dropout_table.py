"""Print the dropout study's table (markdown) from the run folders scripts/dropout_study.sh fills.

Each run folder ROOT/<method>_d<dropout>/ holds config.yaml (method and dropout are read from it),
eval_n<N>.json (test split), train_eval_n<N>.json (training split) and lipschitz_n<LIP_N>.json. Gaps are
train minus test, in percentage points (spec/lipschitz.md section 3). Missing numbers print as "-", so a
partial study prints too. Sanity findings of the evaluations are listed under the table.

    python scripts/dropout_table.py runs/dropout --n 1000 --lip-n 1000
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import yaml

METHOD_ORDER = ("natural", "pgd_at", "trades", "rst")
_PGD_KEY = re.compile(r"pgd\d+")


def _load_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def method_label(method: dict) -> str:
    """natural, PGD-AT, TRADES(beta), RST(beta), from the run's `method` config section."""
    name = method.get("name", "?")
    if name == "trades":
        return f"TRADES({method.get('trades_beta', 6.0):g})"
    if name == "rst":
        return f"RST({method.get('rst_beta', 1.0):g})"
    return {"pgd_at": "PGD-AT"}.get(name, name)


def shipped_result(report: dict | None) -> tuple[dict, str | None]:
    """The accuracies of the shipped model (first in the file) and its PGD-k key ('pgd20')."""
    if not report or not report.get("models"):
        return {}, None
    result = next(iter(report["models"].values()))
    pgd = next((k for k in result if _PGD_KEY.fullmatch(k)), None)
    return result, pgd


def study_row(run_dir: Path, n: int, lip_n: int) -> dict:
    """One row: accuracies in [0, 1] (None where missing), Lipschitz means, and the sanity findings."""
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    test_report = _load_json(run_dir / f"eval_n{n}.json")
    train_report = _load_json(run_dir / f"train_eval_n{n}.json")
    lipschitz = _load_json(run_dir / f"lipschitz_n{lip_n}.json")
    test, test_pgd = shipped_result(test_report)
    train, train_pgd = shipped_result(train_report)
    lip = next(iter(lipschitz["models"].values())) if lipschitz and lipschitz.get("models") else {}
    findings = []
    for split, report in (("test", test_report), ("train", train_report)):
        for model, fired in ((report or {}).get("sanity") or {}).items():
            findings += [f"{split} {model}: [{f['check']}] {f['message']}" for f in fired]
    return {
        "run": run_dir.name,
        "method": cfg.get("method", {}).get("name", "?"),
        "label": method_label(cfg.get("method", {})),
        "dropout": float(cfg.get("model", {}).get("dropout", 0.0)),
        "train_clean": train.get("clean"), "test_clean": test.get("clean"),
        "train_pgd": train.get(train_pgd) if train_pgd else None,
        "test_pgd": test.get(test_pgd) if test_pgd else None,
        "pgd_key": test_pgd or train_pgd,
        "train_lipschitz": lip.get("train", {}).get("mean"), "test_lipschitz": lip.get("test", {}).get("mean"),
        "sanity": findings,
    }


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _gap(train: float | None, test: float | None) -> str:
    return "-" if train is None or test is None else f"{100 * (train - test):+.1f}"


def _lip(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def study_rows(root: Path, n: int, lip_n: int) -> list[dict]:
    """Every run folder under root (one with a config.yaml), ordered by method, then dropout."""
    rows = [study_row(d, n, lip_n) for d in sorted(root.iterdir()) if (d / "config.yaml").is_file()]
    rank = {m: i for i, m in enumerate(METHOD_ORDER)}
    return sorted(rows, key=lambda r: (rank.get(r["method"], len(rank)), r["method"], r["dropout"]))


def markdown_table(rows: list[dict], n: int, lip_n: int) -> str:
    pgd = next((r["pgd_key"] for r in rows if r["pgd_key"]), "pgd20").upper().replace("PGD", "PGD-")
    lines = [
        f"| method | dropout | train clean | test clean | clean gap | train {pgd} | test {pgd} | {pgd} gap | "
        "train Lipschitz | test Lipschitz |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['label']} | {r['dropout']:g} | {_pct(r['train_clean'])} | {_pct(r['test_clean'])} | "
                     f"{_gap(r['train_clean'], r['test_clean'])} | {_pct(r['train_pgd'])} | {_pct(r['test_pgd'])} | "
                     f"{_gap(r['train_pgd'], r['test_pgd'])} | {_lip(r['train_lipschitz'])} | "
                     f"{_lip(r['test_lipschitz'])} |")
    lines.append("")
    lines.append(f"Accuracy in % on the first {n} points of each split (train: the run's training images, no "
                 f"augmentation); gaps are train minus test in points; local Lipschitz (ascent) on the first "
                 f"{lip_n} points of each split.")
    findings = [f"- {r['run']}, {f}" for r in rows for f in r["sanity"]]
    lines.append("")
    lines.append("Sanity checks: " + ("nothing fired." if not findings else "\n" + "\n".join(findings)))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", nargs="?", default="runs/dropout", help="folder holding the run folders")
    parser.add_argument("--n", type=int, default=1000, help="points per split of the accuracy files")
    parser.add_argument("--lip-n", type=int, help="points per split of the Lipschitz files (default: --n)")
    args = parser.parse_args(argv)
    root = Path(args.root)
    if not root.is_dir():
        parser.error(f"{root}: not a folder; run scripts/dropout_study.sh first")
    lip_n = args.n if args.lip_n is None else args.lip_n
    print(markdown_table(study_rows(root, args.n, lip_n), args.n, lip_n))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
