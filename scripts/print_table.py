"""Print the comparison table (markdown) from runs/table/<method>/eval_n<N>.json and eval_aa<AA_N>.json."""

import json
import sys
from pathlib import Path

ORDER = ["natural", "pgd_at", "trades", "generalist"]


def load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {"models": {}}


def main(root: str, n: str, aa_n: str) -> None:
    # When AutoAttack ran on the same points, its clean column would repeat the first one.
    same_points = n == aa_n
    aa_clean = "" if same_points else f" clean ({aa_n}) |"
    print(f"| method | model | clean ({n}) | PGD-20 ({n}) | CW-20 ({n}) |{aa_clean} AutoAttack ({aa_n}) |")
    print("|---|---|---|---|---|" + ("" if same_points else "---|") + "---|")
    for method in ORDER:
        main_eval = load(Path(root) / method / f"eval_n{n}.json")
        aa_eval = load(Path(root) / method / f"eval_aa{aa_n}.json")
        for model, res in main_eval["models"].items():
            aa = aa_eval["models"].get(model, {})

            def pct(d: dict, key: str) -> str:
                return f"{100 * d[key]:.1f}" if key in d else "-"

            aa_clean_cell = "" if same_points else f" {pct(aa, 'clean')} |"
            print(f"| {method} | {model} | {pct(res, 'clean')} | {pct(res, 'pgd20')} | {pct(res, 'cw20')} |"
                  f"{aa_clean_cell} {pct(aa, 'autoattack')} |")


if __name__ == "__main__":
    main(*(sys.argv[1:4] if len(sys.argv) > 3 else ["runs/table", "1000", "1000"]))
