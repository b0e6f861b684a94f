"""Print issue 6's DUCAT comparison (markdown) from ROOT/<method>/eval_n<N>.json and eval_aa<AA_N>.json.

    python scripts/print_ducat_table.py runs/table 1000 1000

'-' = not measured. The adaptive column is the logsumexp-fold PGD-20 (`pgd_lse`); for a model without dummy
classes the fold is the identity, so unless its run was evaluated with pgd_lse it reads 'n/a' (it would be
PGD-20 again). Missing result files are listed on stderr with the script that writes them.
"""

import json
import sys
from pathlib import Path

# (run folder, label, the script that trains and evaluates it)
ROWS = [("pgd_at", "PGD-AT", "scripts/fmnist_table.sh"),
        ("pgd_at_ducat", "PGD-AT + DUCAT", "scripts/ducat_table.sh"),
        ("trades", "TRADES", "scripts/fmnist_table.sh"),
        ("trades_ducat", "TRADES + DUCAT", "scripts/ducat_table.sh"),
        ("generalist", "Generalist (global)", "scripts/fmnist_table.sh"),
        ("generalist_ducat", "Generalist + DUCAT (global)", "scripts/ducat_table.sh")]


def load(path: Path) -> dict:
    return json.loads(path.read_text())["models"] if path.exists() else {}


def first(models: dict) -> dict:
    """The shipped model's results (the first of eval_models(): Generalist's global learner)."""
    return next(iter(models.values()), {})


def pct(results: dict, key: str) -> str:
    return f"{100 * results[key]:.1f}" if key in results else "-"


def table(root: str | Path, n: str, aa_n: str) -> tuple[list[str], list[str]]:
    """The markdown lines and the notes about missing result files."""
    lines = [f"| method | clean ({n}) | PGD-20 ({n}) | CW-20 ({n}) | adaptive pgd_lse-20 ({n}) | AutoAttack ({aa_n}) |",
             "|---|---|---|---|---|---|"]
    missing = []
    for folder, label, script in ROWS:
        base = Path(root) / folder
        files = (base / f"eval_n{n}.json", base / f"eval_aa{aa_n}.json")
        missing += [f"{f} (written by N={n} AA_N={aa_n} {script})" for f in files if not f.exists()]
        main_eval, aa = (first(load(f)) for f in files)
        plain = not folder.endswith("_ducat")
        adaptive = "n/a" if plain and main_eval and "pgd_lse20" not in main_eval else pct(main_eval, "pgd_lse20")
        lines.append(f"| {label} | {pct(main_eval, 'clean')} | {pct(main_eval, 'pgd20')} | {pct(main_eval, 'cw20')} | "
                     f"{adaptive} | {pct(aa, 'autoattack')} |")
    lines.append("")
    lines.append("n/a: no dummy classes, so the logsumexp-fold is the identity and the adaptive attack is PGD-20.")
    return lines, missing


def main(root: str, n: str, aa_n: str) -> None:
    lines, missing = table(root, n, aa_n)
    print("\n".join(lines))
    for note in missing:
        print(f"missing: {note}", file=sys.stderr)


if __name__ == "__main__":
    main(*(sys.argv[1:4] if len(sys.argv) > 3 else ["runs/table", "1000", "1000"]))
