"""Print the comparison table (markdown) from the eval JSON files of runs/table/<method>/."""

import json
import sys
from pathlib import Path

ORDER = ["natural", "pgd_at", "trades", "generalist"]


def main(root: str) -> None:
    print("| method | model | clean | PGD-20 | CW-20 | AutoAttack | points | eval seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for method in ORDER:
        for name in ("eval_best.json", "eval_best_experts.json"):
            path = Path(root) / method / name
            if not path.exists():
                continue
            report = json.loads(path.read_text())
            for model, res in report["models"].items():
                def pct(key):
                    return f"{100 * res[key]:.1f}" if key in res else "-"
                print(f"| {method} | {model} | {pct('clean')} | {pct('pgd20')} | {pct('cw20')} | "
                      f"{pct('autoattack')} | {report['num_points']} | {report['seconds']:.0f} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/table")
