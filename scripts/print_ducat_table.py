"""Print issue 6's DUCAT comparison (markdown) from runs/table/<method>/eval_*.json; '-' = not measured."""

import json
import sys
from pathlib import Path

ROWS = [("pgd_at", "PGD-AT"), ("pgd_at_ducat", "PGD-AT + DUCAT"), ("trades", "TRADES"),
        ("trades_ducat", "TRADES + DUCAT"), ("generalist", "Generalist (global)"),
        ("generalist_ducat", "Generalist + DUCAT (global)")]


def load(path: Path) -> dict:
    return json.loads(path.read_text())["models"] if path.exists() else {}


def first(models: dict) -> dict:
    return next(iter(models.values()), {})


def main(root: str, n: str, aa_n: str) -> None:
    print(f"| method | clean ({n}) | PGD-20 ({n}) | CW-20 ({n}) | adaptive pgd_lse-20 ({n}) | AutoAttack ({aa_n}) |")
    print("|---|---|---|---|---|---|")
    for folder, label in ROWS:
        base = Path(root) / folder
        main_eval = first(load(base / f"eval_n{n}.json"))
        # Without dummy classes the logsumexp-fold is the identity, so pgd_lse is PGD-20 (tests/ducat checks it).
        lse_key = "pgd_lse20" if folder.endswith("_ducat") else "pgd20"
        aa = first(load(base / f"eval_aa{aa_n}.json"))

        def pct(d: dict, key: str) -> str:
            return f"{100 * d[key]:.1f}" if key in d else "-"

        print(f"| {label} | {pct(main_eval, 'clean')} | {pct(main_eval, 'pgd20')} | {pct(main_eval, 'cw20')} | "
              f"{pct(main_eval, lse_key)} | {pct(aa, 'autoattack')} |")


if __name__ == "__main__":
    main(*(sys.argv[1:4] if len(sys.argv) > 3 else ["runs/table", "1000", "1000"]))
