"""The study's summary: each method's mean and std over seeds per column, and its paired difference to the
baseline method (same seed) with a 95% t-interval; written as JSON, markdown and a trade-off PNG.

Airbench's rule (STYLE.md 19): a comparison is a distribution. With n seeds the paired interval is
mean(d) +- t(0.975, n - 1) sd(d) / sqrt(n); for n = 3, t = 4.30, so the interval spans about +-2.5 sd(d): only a
difference several times its seed-to-seed spread excludes zero.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from .plan import Column, StudyPlan

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Spread:
    n: int
    mean: float
    std: float | None  # sample std (n - 1); None for one value

    def to_dict(self) -> dict:
        return {"n": self.n, "mean": self.mean, "std": self.std}


@dataclass(frozen=True)
class PairedDifference:
    n: int
    mean: float
    std: float | None
    low: float | None  # the 95% t-interval; None below two pairs
    high: float | None

    def to_dict(self) -> dict:
        return {"n": self.n, "mean": self.mean, "std": self.std, "ci95": [self.low, self.high]}


def spread(values: list[float]) -> Spread | None:
    if not values:
        return None
    return Spread(len(values), statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None)


def t_quantile(probability: float, dof: int) -> float:
    from scipy.stats import t

    return float(t.ppf(probability, dof))


def paired_difference(method: dict[int, float], baseline: dict[int, float]) -> PairedDifference | None:
    """method - baseline over the seeds both have; the interval is the two-sided 95% Student t-interval."""
    seeds = sorted(set(method) & set(baseline))
    if not seeds:
        return None
    diffs = [method[s] - baseline[s] for s in seeds]
    s = spread(diffs)
    if s.std is None:
        return PairedDifference(s.n, s.mean, None, None, None)
    half = t_quantile(0.5 + CONFIDENCE / 2, s.n - 1) * s.std / math.sqrt(s.n)
    return PairedDifference(s.n, s.mean, s.std, s.mean - half, s.mean + half)


# --- reading results -----------------------------------------------------------------------------------------


def _eval_value(path: Path, key: str) -> float | None:
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    models = report.get("models") or {}
    # The shipped model: Generalist's global learner, else the only one.
    entry = models.get("global") or models.get("model") or next(iter(models.values()), None)
    value = (entry or {}).get(key)
    return None if value is None else 100.0 * float(value)


def _epochs_value(path: Path, column: Column) -> float | None:
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return None
    if not rows:
        return None
    if column.key == "minutes":  # training time: every epoch including its validation
        return sum(float(r.get("epoch_seconds") or 0.0) for r in rows) / 60.0
    row = rows[-1] if column.row == "last" else max(rows, key=lambda r: float(r.get("val_score") or "-inf"))
    value = row.get(column.key)
    if value in (None, ""):
        return None
    scale = 100.0 if column.key.startswith("val_") and column.key != "val_score" else 1.0
    return scale * float(value)


def collect(plan: StudyPlan, root: Path = Path(".")) -> dict[str, dict[int, dict[str, float]]]:
    """{method: {seed: {column: value}}} from the results folder; missing figures are left out."""
    values: dict[str, dict[int, dict[str, float]]] = {}
    for spec, seed, run in plan.run_names():
        folder = root / plan.results_dir / run
        row = {}
        for column in plan.summary.columns:
            value = (_epochs_value(folder / "epochs.csv", column) if column.eval is None
                     else _eval_value(folder / f"eval_{column.eval}.json", column.key))
            if value is not None:
                row[column.name] = value
        values.setdefault(spec.name, {})[seed] = row
    return values


# --- the summary ---------------------------------------------------------------------------------------------


def summarise(plan: StudyPlan, values: dict[str, dict[int, dict[str, float]]]) -> dict:
    columns = [c.name for c in plan.summary.columns]
    baseline = plan.summary.baseline
    methods = {}
    for method, by_seed in values.items():
        entry: dict = {"seeds": sorted(s for s, row in by_seed.items() if row), "columns": {}, "vs_baseline": {}}
        for col in columns:
            per_seed = {s: row[col] for s, row in by_seed.items() if col in row}
            s = spread(list(per_seed.values()))
            entry["columns"][col] = None if s is None else {**s.to_dict(), "values": per_seed}
            if baseline and method != baseline:
                base = {s: row[col] for s, row in values.get(baseline, {}).items() if col in row}
                d = paired_difference(per_seed, base)
                entry["vs_baseline"][col] = None if d is None else d.to_dict()
        methods[method] = entry
    labels = {c.name: c.label or c.name for c in plan.summary.columns}
    return {"study": plan.name, "baseline": baseline, "columns": columns, "labels": labels,
            "confidence": CONFIDENCE, "methods": methods}


def _cell(stat: dict | None) -> str:
    if not stat:
        return "-"
    return f"{stat['mean']:.1f}" if stat["std"] is None else f"{stat['mean']:.1f} ± {stat['std']:.1f}"


def _diff_cell(d: dict | None) -> str:
    if not d:
        return "-"
    low, high = d["ci95"]
    if low is None:
        return f"{d['mean']:+.1f} (n = 1)"
    return f"{d['mean']:+.1f} [{low:+.1f}, {high:+.1f}]"


def markdown(summary: dict) -> str:
    columns = summary["columns"]
    lines = [f"### {summary['study']}", "",
             "Mean ± std over seeds (sample std, n - 1); accuracies in %.", "",
             "| method | seeds | " + " | ".join(columns) + " |", "|---|---:|" + "---:|" * len(columns)]
    for method, entry in summary["methods"].items():
        cells = [_cell(entry["columns"].get(c)) for c in columns]
        lines.append(f"| {method} | {len(entry['seeds'])} | " + " | ".join(cells) + " |")
    baseline = summary["baseline"]
    rows = [(m, e) for m, e in summary["methods"].items() if m != baseline and e["vs_baseline"]]
    if baseline and rows:
        lines += ["", f"Paired difference to {baseline} (same seed): mean [95% t-interval], in points.", "",
                  "| method | pairs | " + " | ".join(columns) + " |", "|---|---:|" + "---:|" * len(columns)]
        for method, entry in rows:
            pairs = max((d["n"] for d in entry["vs_baseline"].values() if d), default=0)
            cells = [_diff_cell(entry["vs_baseline"].get(c)) for c in columns]
            lines.append(f"| {method} | {pairs} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# A method is drawn in the zoomed panel when its mean on the plot's y axis is at least this share of the best
# method's: a natural baseline near 0% robust accuracy would otherwise squeeze the robust methods into a corner.
ZOOM_SHARE = 0.5


def tradeoff_points(summary: dict, x: str, y: str) -> list[dict]:
    """Per method with both figures: the seeds that have both, and mean / sample std over those seeds only, so a
    point never pairs a mean over three seeds with a mean over one."""
    points = []
    for i, (method, entry) in enumerate(summary["methods"].items()):
        cx, cy = entry["columns"].get(x), entry["columns"].get(y)
        if not cx or not cy:
            continue
        seeds = sorted(set(cx["values"]) & set(cy["values"]))
        if not seeds:
            continue
        xs, ys = [cx["values"][s] for s in seeds], [cy["values"][s] for s in seeds]
        sx, sy = spread(xs), spread(ys)
        points.append({"method": method, "color": f"C{i % 10}", "seeds": seeds, "xs": xs, "ys": ys,
                       "x": sx.mean, "y": sy.mean, "x_std": sx.std or 0.0, "y_std": sy.std or 0.0})
    return points


def tradeoff_plot(summary: dict, x: str, y: str, out: Path) -> Path | None:
    """Each method's seeds (faint) and mean with std bars in both axes; beside it, when some method is far below
    the rest on y (a natural baseline), the same zoomed on the others."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = tradeoff_points(summary, x, y)
    if not points:
        return None
    top = max(p["y"] for p in points)
    near = [p for p in points if p["y"] >= ZOOM_SHARE * top]
    panels = [("all methods", points)] + ([(f"zoom: mean {y} >= {ZOOM_SHARE:.0%} of the best", near)]
                                          if len(near) < len(points) else [])
    labels = summary.get("labels", {})
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.8), squeeze=False)
    for ax, (title, shown) in zip(axes[0], panels):
        for p in shown:
            ax.scatter(p["xs"], p["ys"], color=p["color"], alpha=0.35, s=18)
            ax.errorbar(p["x"], p["y"], xerr=p["x_std"], yerr=p["y_std"], fmt="o", color=p["color"], capsize=4,
                        markersize=7, label=f"{p['method']} (n = {len(p['seeds'])})")
        ax.set_xlabel(f"{labels.get(x, x)}, accuracy (%)")
        ax.set_ylabel(f"{labels.get(y, y)}, accuracy (%)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(f"{summary['study']}: mean ± std over seeds (dots: seeds)", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def write_summary(plan: StudyPlan, root: Path = Path(".")) -> dict:
    """summary.json, summary.md and (with a trade-off pair and matplotlib) tradeoff.png in the plan's summary
    folder (default: its results folder)."""
    summary = summarise(plan, collect(plan, root))
    folder = root / (plan.summary.folder or plan.results_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (folder / "summary.md").write_text(markdown(summary))
    summary["written_to"] = [str(folder / "summary.json"), str(folder / "summary.md")]
    if plan.summary.tradeoff:
        png = tradeoff_plot(summary, *plan.summary.tradeoff, folder / "tradeoff.png")
        if png is not None:
            summary["written_to"].append(str(png))
    return summary
