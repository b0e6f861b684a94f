"""`python -m trainer report RUN_DIR ... --out FILE.md`: a markdown report with PNG plots over runs.

Reads only what the other commands wrote into each run folder: config.yaml, epochs.csv, steps.jsonl,
eval_*.json (`trainer eval`), sweep_*.json (`trainer sweep`), lipschitz_*.json (`trainer lipschitz`),
plus any separation JSON (`trainer separation`) passed explicitly. Plots: training curves per run, the
clean-vs-robust trade-off (one point per run, labelled with its method) and accuracy against eps.
matplotlib is optional (the 'eval' extra) and runs on the headless 'Agg' backend.
"""

from __future__ import annotations

import csv
import datetime
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from trainer.analysis.sanity import SanityFinding, result_checks, warn_findings
from trainer.errors import ConfigError, MissingDependencyError

# Accuracy keys shown in tables, in this order; everything else (seconds_*, per-stage AutoAttack) is left out.
_ACCURACY_KEY = re.compile(r"clean|pgd\d+|pgd_lse\d+|cw\d+|autoattack")


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise MissingDependencyError("the report's plots need matplotlib, which is not installed: "
                                     "pip install matplotlib (or the project's 'eval' extra)") from None
    matplotlib.use("Agg")  # headless: no display on training machines
    import matplotlib.pyplot as plt

    return plt


@dataclass
class RunRecord:
    """Everything the report reads from one run folder."""

    path: Path
    config: dict
    epochs: list[dict[str, float]] = field(default_factory=list)
    steps: list[dict[str, float]] = field(default_factory=list)
    evals: list[tuple[str, dict]] = field(default_factory=list)  # (file name, eval JSON)
    sweeps: list[tuple[str, dict]] = field(default_factory=list)
    lipschitz: list[tuple[str, dict]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def method(self) -> str:
        return str(self.config.get("method", {}).get("name", "?"))

    @property
    def label(self) -> str:
        return self.method if self.method == self.name else f"{self.method} ({self.name})"


def _number(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def load_run(run_dir: str | Path) -> RunRecord:
    path = Path(run_dir)
    config_path = path / "config.yaml"
    if not config_path.is_file():
        raise ConfigError(f"{path}: no config.yaml; expected a run folder written by `python -m trainer train`")
    record = RunRecord(path, yaml.safe_load(config_path.read_text()) or {})
    if (path / "epochs.csv").is_file():
        with (path / "epochs.csv").open(newline="") as f:
            record.epochs = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]
    if (path / "steps.jsonl").is_file():
        for line in (path / "steps.jsonl").read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a killed run
            if isinstance(row, dict):
                record.steps.append(row)
    # eval_*.json also matches AutoAttack's resumable state files; only evaluation results carry 'models'.
    for pattern, target, kind in (("eval_*.json", record.evals, None), ("sweep_*.json", record.sweeps, "eps_sweep"),
                                  ("lipschitz_*.json", record.lipschitz, "local_lipschitz")):
        for file in sorted(path.glob(pattern)):
            data = _read_json(file)
            if data is None or not isinstance(data.get("models"), dict):
                continue
            if kind is None and "num_points" not in data:
                continue
            if kind is not None and data.get("kind") != kind:
                continue
            target.append((file.name, data))
    return record


# ---------------------------------------------------------------------------------------------
# Choices


def headline(record: RunRecord) -> dict | None:
    """The run's point on the trade-off plot: the shipped model (first in the file) of the eval file with
    AutoAttack and the most points (else the one with the most points); robust = its lowest attack accuracy.
    """
    candidates = []
    for file, data in record.evals:
        if not data["models"]:
            continue
        model, res = next(iter(data["models"].items()))
        attacks = {k: v for k, v in res.items() if _ACCURACY_KEY.fullmatch(k) and k != "clean"}
        if "clean" not in res or not attacks:
            continue
        key = min(attacks, key=attacks.get)
        candidates.append(({"file": file, "model": model, "clean": res["clean"], "robust": attacks[key],
                            "robust_attack": key, "num_points": data.get("num_points", 0)},
                           ("autoattack" in attacks, data.get("num_points", 0))))
    if not candidates:
        return None
    return max(candidates, key=lambda c: c[1])[0]


def _md_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(v: object) -> str:
        if isinstance(v, float):
            return "-" if math.isnan(v) else f"{v:.4g}"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _pct(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


# ---------------------------------------------------------------------------------------------
# Plots


def plot_training(record: RunRecord, out: Path) -> bool:
    """Losses per logged step and accuracies per epoch; False when the run logged nothing."""
    if not record.steps and not record.epochs:
        return False
    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    loss_keys = sorted({k for row in record.steps for k in row if "loss" in k})
    for key in loss_keys:
        pts = [(row["step"], row[key]) for row in record.steps if key in row and "step" in row]
        if pts:
            ax_loss.plot(*zip(*pts), label=key)
    ax_loss.set(xlabel="step", ylabel="training loss", title=f"{record.label}: loss per logged step")
    acc_keys = [k for k in (record.epochs[0] if record.epochs else {})
                if (k.startswith("val_") and k != "val_score") or (k.startswith("train_") and "acc" in k)]
    for key in acc_keys:
        pts = [(row["epoch"], row[key]) for row in record.epochs if not math.isnan(row.get(key, math.nan))]
        if pts:
            ax_acc.plot(*zip(*pts), marker="o", label=key)
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy per epoch")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


def plot_tradeoff(points: list[tuple[str, dict]], out: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    for label, p in points:
        ax.scatter(100 * p["clean"], 100 * p["robust"], s=50)
        ax.annotate(label, (100 * p["clean"], 100 * p["robust"]), textcoords="offset points", xytext=(5, 5),
                    fontsize=9)
    ax.set(xlabel="clean accuracy (%)", ylabel="robust accuracy (%)", title="clean vs robust accuracy")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_accuracy_vs_eps(curves: list[tuple[str, list[dict]]], out: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    for label, curve in curves:
        ax.plot([p["eps"] for p in curve], [100 * p["accuracy"] for p in curve], marker="o", label=label)
    ax.set(xlabel="eps (pixel space)", ylabel="PGD accuracy (%)", title="accuracy against eps")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# The report


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "run"


def write_report(run_dirs: Sequence[str | Path], out: str | Path, *, separation_files: Sequence[str | Path] = (),
                 sweep_points: int = 0, emit_warnings: bool = True) -> Path:
    """Write the markdown report `out` and its PNGs in `<out stem>_figures/`; return the report's path.

    `sweep_points` > 0 first runs `trainer sweep` (on that many test points) for runs without a sweep file.
    """
    if not run_dirs:
        raise ConfigError("report: expected at least one run folder")
    out = Path(out)
    records = [load_run(d) for d in run_dirs]
    if sweep_points > 0:
        from trainer.analysis.run_analysis import sweep_checkpoint

        for i, record in enumerate(records):
            if not record.sweeps:
                sweep_checkpoint(record.path, num_points=sweep_points, emit_warnings=emit_warnings)
                records[i] = load_run(record.path)
    figures = out.parent / f"{out.stem}_figures"
    figures.mkdir(parents=True, exist_ok=True)

    def rel(p: Path) -> str:
        return p.relative_to(out.parent).as_posix()

    md = [f"# Robustness report\n\nGenerated {datetime.datetime.now().isoformat(timespec='seconds')} from "
          f"{len(records)} run(s).\n"]
    md.append("## Runs\n")
    md.append(_md_table(
        ["run", "method", "dataset", "model", "dropout", "epochs", "norm", "train eps", "folder"],
        [[r.name, r.method, r.config.get("data", {}).get("dataset", "?"), r.config.get("model", {}).get("arch", "?"),
          r.config.get("model", {}).get("dropout", "?"), r.config.get("train", {}).get("epochs", "?"),
          r.config.get("attack", {}).get("norm", "?"), r.config.get("attack", {}).get("eps", "?"), str(r.path)]
         for r in records]) + "\n")

    # Evaluations
    findings: list[tuple[str, SanityFinding | dict]] = []
    rows = []
    for r in records:
        for file, data in r.evals:
            for model, res in data["models"].items():
                rows.append([r.name, file, model, data.get("num_points", "?"), data.get("eps", "?"),
                             _pct(res.get("clean")), *(_pct(res.get(k)) for k in ("pgd20", "cw20", "autoattack"))])
                rows[-1].append(", ".join(f"{k} {_pct(v)}" for k, v in res.items() if _ACCURACY_KEY.fullmatch(k)
                                          and k not in ("clean", "pgd20", "cw20", "autoattack")) or "")
                findings += [(f"{r.name}/{file} model {model}", f) for f in result_checks(res)]
    md.append("## Evaluations (accuracy %)\n")
    md.append(_md_table(["run", "file", "model", "points", "eps", "clean", "pgd20", "cw20", "autoattack", "other"],
                        rows) + "\n" if rows else "No eval_*.json files: run `python -m trainer eval RUN`.\n")

    # Trade-off
    points = [(r.label, h) for r in records if (h := headline(r)) is not None]
    md.append("## Clean vs robust trade-off\n")
    if points:
        png = figures / "tradeoff.png"
        plot_tradeoff(points, png)
        md.append(f"![clean vs robust]({rel(png)})\n")
        md.append("One point per run: the shipped model of the eval file with AutoAttack and the most points "
                  "(else the most points); robust = the lowest attack accuracy in that file.\n")
        md.append(_md_table(["run", "file", "model", "points", "clean %", "robust %", "attack"],
                            [[label, p["file"], p["model"], p["num_points"], _pct(p["clean"]), _pct(p["robust"]),
                              p["robust_attack"]] for label, p in points]) + "\n")
    else:
        md.append("No evaluation with both clean and attack accuracy.\n")

    # Accuracy against eps
    curves, sweep_rows = [], []
    for r in records:
        for file, data in r.sweeps:
            for model, sweep in data["models"].items():
                label = r.label if len(data["models"]) == 1 else f"{r.label} {model}"
                curves.append((label, sweep["curve"]))
                sweep_rows.append([label, file, sweep.get("num_points", "?"), sweep.get("attack", "?"),
                                   _pct(sweep.get("clean")),
                                   ", ".join(f"{p['eps']:.4g}: {_pct(p['accuracy'])}" for p in sweep["curve"])])
                findings += [(f"{r.name}/{file} model {model}", f) for f in sweep.get("sanity", [])]
    md.append("## Accuracy against eps\n")
    if curves:
        png = figures / "accuracy_vs_eps.png"
        plot_accuracy_vs_eps(curves, png)
        md.append(f"![accuracy against eps]({rel(png)})\n")
        md.append(_md_table(["run", "file", "points", "attack", "clean %", "eps: accuracy %"], sweep_rows) + "\n")
    else:
        md.append("No sweep_*.json files: run `python -m trainer sweep RUN` (or `report --sweep-points N`).\n")

    # Local Lipschitz
    lip_rows = []
    for r in records:
        for file, data in r.lipschitz:
            for model, by_split in data["models"].items():
                lip_rows.append([r.name, file, model, data.get("variant", "?"), data.get("eps", "?"),
                                 by_split.get("train", {}).get("mean", math.nan),
                                 by_split.get("test", {}).get("mean", math.nan),
                                 max((s.get("num_points", 0) for s in by_split.values()), default=0)])
    if lip_rows:
        md.append("## Local Lipschitz constant (spec/lipschitz.md)\n")
        md.append(_md_table(["run", "file", "model", "variant", "eps", "train", "test", "points"], lip_rows) + "\n")

    # Separation
    sep_rows = []
    for file in separation_files:
        data = _read_json(Path(file))
        if data is None or data.get("kind") != "separation":
            raise ConfigError(f"{file}: not a separation result; expected the JSON of `python -m trainer separation`")
        for direction in ("train_train", "test_train"):
            if direction in data:
                s = data[direction]
                verdict = ", ".join(f"2x{v['eps']:.4g}: {'yes' if v['separated'] else 'no'}"
                                    for v in s["two_eps_separated"])
                sep_rows.append([data["dataset"], direction, s["num_points"], s["min_distance"], s["mean_distance"],
                                 s["conflicting_duplicates"], verdict or "-"])
    if sep_rows:
        md.append("## Dataset separation (Linf, pixels in [0, 1])\n")
        md.append(_md_table(["dataset", "direction", "points", "min", "mean", "conflicting duplicates dropped",
                             "min >= 2 eps"], sep_rows) + "\n")

    # Training curves
    md.append("## Training curves\n")
    for r in records:
        png = figures / f"training_{_slug(r.name)}.png"
        if plot_training(r, png):
            md.append(f"### {r.label}\n\n![training curves of {r.name}]({rel(png)})\n")
        else:
            md.append(f"### {r.label}\n\nNo epochs.csv or steps.jsonl.\n")

    # Sanity
    md.append("## Sanity checks\n")
    if findings:
        for where, f in findings:
            f = f if isinstance(f, SanityFinding) else SanityFinding(**f)
            md.append(f"- **{f.check}** ({where}): {f.message}. {f.explanation}")
        md.append("")
    else:
        md.append("No check fired on the evaluation results and sweeps above.\n")
    if emit_warnings:
        warn_findings([f for _, f in findings if isinstance(f, SanityFinding)])

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(md) + "\n")
    return out
