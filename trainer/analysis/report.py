"""`python -m generalist_trainer report RUN_DIR ... --out FILE.md`: a markdown report with PNG plots over runs.

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

from ..config import migrate_stored_config
from ..errors import ConfigError, MissingDependencyError
from .sanity import SanityFinding, result_checks, warn_findings

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
        raise ConfigError(f"{path}: no config.yaml; expected a run folder written by "
                          "`python -m generalist_trainer train`")
    stored = yaml.safe_load(config_path.read_text()) or {}
    # A run folder written before keys were renamed (trainer/config.py RENAMED_KEYS) reads as a new one.
    record = RunRecord(path, migrate_stored_config(stored)[0] if isinstance(stored, dict) else stored)
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

# Config fields that do not change what a run learns (where it writes, how it reports, how many threads or
# loader workers it uses) and the seed: runs that differ only in these are seeds of one experiment. The eval
# section is left out too: each eval JSON records its own settings.
_NOT_THE_EXPERIMENT = {
    "name", "train.seed", "train.out_dir", "train.device", "train.threads", "train.progress",
    "train.log_every_steps", "train.checkpoint_every_steps", "train.finite_check_every_steps",
    "train.process_group", "train.dist_check_every_steps", "data.data_dir", "data.num_workers", "data.loader",
}
_NOT_THE_EXPERIMENT_SECTIONS = ("eval.",)


def _flatten(config: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def experiment_settings(record: RunRecord) -> dict[str, object]:
    """The run's config, flattened, without the seed and the fields that do not change what it learns."""
    return {k: v for k, v in _flatten(record.config).items()
            if k not in _NOT_THE_EXPERIMENT and not k.startswith(_NOT_THE_EXPERIMENT_SECTIONS)}


@dataclass
class RunGroup:
    """Runs of one method and config that differ only in their seed (`experiment_settings`)."""

    label: str
    records: list[RunRecord]

    @property
    def seeds(self) -> list[object]:
        return [r.config.get("train", {}).get("seed", "?") for r in self.records]


def group_runs(records: Sequence[RunRecord]) -> list[RunGroup]:
    """Runs grouped by method and config apart from the seed, in order of first appearance. A group's label
    is its method, plus the settings that tell it apart from other groups of the same method."""
    keyed: dict[str, list[RunRecord]] = {}
    for r in records:
        keyed.setdefault(json.dumps(experiment_settings(r), sort_keys=True, default=str), []).append(r)
    groups = list(keyed.values())
    labels = []
    for members in groups:
        method = members[0].method
        settings = experiment_settings(members[0])
        siblings = [experiment_settings(g[0]) for g in groups if g[0].method == method and g is not members]
        differing = sorted({k for other in siblings for k in set(settings) | set(other)
                            if settings.get(k) != other.get(k)})
        shown = ", ".join(f"{k}={settings.get(k, '-')}" for k in differing[:3]) + (", ..." if len(differing) > 3
                                                                                   else "")
        labels.append(f"{method} ({shown})" if shown else method)
    return [RunGroup(label, members) for label, members in zip(labels, groups)]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1 in the denominator; NaN for fewer than two values)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def _attack_key(key: str, data: dict) -> str:
    """An accuracy key, with AutoAttack's version when it is not the standard one (their figures differ)."""
    version = data.get("eval_config", {}).get("autoattack_version", "standard")
    return f"autoattack-{version}" if key == "autoattack" and version != "standard" else key


def attack_name(key: str) -> str:
    """'pgd20' -> 'PGD-20', 'cw20' -> 'CW-20', 'autoattack' -> 'AutoAttack', 'autoattack-apgd' ->
    'AutoAttack (apgd)'."""
    if key.startswith("autoattack"):
        return "AutoAttack" + (f" ({key.split('-', 1)[1]})" if "-" in key else "")
    match = re.fullmatch(r"(pgd_lse|pgd|cw)(\d+)", key)
    if match:
        return {"pgd": "PGD", "pgd_lse": "PGD-LSE", "cw": "CW"}[match.group(1)] + f"-{match.group(2)}"
    return key


def headline(record: RunRecord) -> dict | None:
    """The run's point on the trade-off plot: the shipped model (first in the file) of the eval file with
    AutoAttack and the most points (else the one with the most points); robust = its lowest attack accuracy.
    "accuracies" holds every attack accuracy of that model (AutoAttack keyed with its version, `_attack_key`).
    """
    candidates = []
    for file, data in record.evals:
        if not data["models"]:
            continue
        model, res = next(iter(data["models"].items()))
        attacks = {_attack_key(k, data): v for k, v in res.items() if _ACCURACY_KEY.fullmatch(k) and k != "clean"}
        if "clean" not in res or not attacks:
            continue
        key = min(attacks, key=attacks.get)
        candidates.append(({"file": file, "model": model, "clean": res["clean"], "robust": attacks[key],
                            "robust_attack": key, "num_points": data.get("num_points", 0), "accuracies": attacks},
                           ("autoattack" in res, data.get("num_points", 0))))
    if not candidates:
        return None
    return max(candidates, key=lambda c: c[1])[0]


@dataclass
class GroupPoint:
    """A group's place on the trade-off plot: each run's clean and robust accuracy (fractions), robust under
    `attack`, the attack every run of the group was evaluated with that leaves the lowest mean accuracy."""

    label: str
    runs: list[str]
    seeds: list[object]
    clean: list[float]
    robust: list[float]
    attack: str
    num_points: list[int]

    @property
    def clean_mean_std(self) -> tuple[float, float]:
        return mean_std(self.clean)

    @property
    def robust_mean_std(self) -> tuple[float, float]:
        return mean_std(self.robust)


def tradeoff_points(groups: Sequence[RunGroup]) -> list[GroupPoint]:
    """One GroupPoint per group with an evaluation (runs without one are left out of their group's point).

    The robust attack is chosen per group among the attacks of every member's headline file, so the mean is
    over one attack; when the members share none, each run's own lowest attack is used and the attack is
    reported as "lowest per run".
    """
    points = []
    for group in groups:
        heads = [(r, h) for r in group.records if (h := headline(r)) is not None]
        if not heads:
            continue
        common = set.intersection(*(set(h["accuracies"]) for _, h in heads))
        if common:
            in_order = [k for k in heads[0][1]["accuracies"] if k in common]  # ties: the file's order
            attack = min(in_order, key=lambda k: mean_std([h["accuracies"][k] for _, h in heads])[0])
            robust = [h["accuracies"][attack] for _, h in heads]
        else:
            attack, robust = "lowest per run", [h["robust"] for _, h in heads]
        points.append(GroupPoint(group.label, [r.name for r, _ in heads],
                                 [r.config.get("train", {}).get("seed", "?") for r, _ in heads],
                                 [h["clean"] for _, h in heads], robust, attack, [h["num_points"] for _, h in heads]))
    return points


def epoch_curve(records: Sequence[RunRecord], key: str) -> list[tuple[int, float, float, int]]:
    """(epoch, mean, std, runs) of epochs.csv column `key` over the runs that logged it at that epoch."""
    by_epoch: dict[int, list[float]] = {}
    for r in records:
        for row in r.epochs:
            value, epoch = row.get(key, math.nan), row.get("epoch", math.nan)
            if not (math.isnan(value) or math.isnan(epoch)):
                by_epoch.setdefault(int(epoch), []).append(value)
    return [(epoch, *mean_std(values), len(values)) for epoch, values in sorted(by_epoch.items())]


def step_curve(records: Sequence[RunRecord], key: str) -> list[tuple[int, float, float, int]]:
    """(step, mean, std, runs) of steps.jsonl field `key` over the runs that logged it at that step."""
    by_step: dict[int, list[float]] = {}
    for r in records:
        for row in r.steps:
            value, step = row.get(key), row.get("step")
            if isinstance(value, (int, float)) and isinstance(step, int) and math.isfinite(value):
                by_step.setdefault(step, []).append(float(value))
    return [(step, *mean_std(values), len(values)) for step, values in sorted(by_step.items())]


def training_panels(records: Sequence[RunRecord]) -> dict[str, dict]:
    """What the training figure of a group of runs draws, panel by panel; only panels with data.

    "loss": the logged losses per step (steps.jsonl), or, without steps.jsonl, per epoch (epochs.csv).
    "accuracy": training and validation accuracies per epoch (epochs.csv).
    Each panel: {"x": "step" | "epoch", "curves": {key: [(x, mean, std, runs)]}}.
    """
    panels: dict[str, dict] = {}
    step_keys = sorted({k for r in records for row in r.steps for k in row if "loss" in k})
    epoch_keys = list(dict.fromkeys(k for r in records for row in r.epochs for k in row))
    step_losses = {k: c for k in step_keys if (c := step_curve(records, k))}
    if step_losses:
        panels["loss"] = {"x": "step", "curves": step_losses}
    else:
        epoch_losses = {k: c for k in epoch_keys if k.startswith("train_") and "loss" in k
                        if (c := epoch_curve(records, k))}
        if epoch_losses:
            panels["loss"] = {"x": "epoch", "curves": epoch_losses}
    accuracies = {k: c for k in epoch_keys
                  if ((k.startswith("val_") and k != "val_score") or (k.startswith("train_") and k.endswith("acc")))
                  if (c := epoch_curve(records, k))}
    if accuracies:
        panels["accuracy"] = {"x": "epoch", "curves": accuracies}
    return panels


def _md_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(v: object) -> str:
        if isinstance(v, float):
            return "-" if math.isnan(v) else f"{v:.4g}"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _pct(v: float | None) -> str:
    """An accuracy in [0, 1] as a percentage with one decimal; "-" when missing."""
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def _pct_spread(values: Sequence[float]) -> str:
    """"mean +- std" in % over seeds; the value alone for one run."""
    mean, std = mean_std(values)
    return _pct(mean) if math.isnan(std) else f"{_pct(mean)} ± {100 * std:.1f}"


# ---------------------------------------------------------------------------------------------
# Plots


def _curve_label(key: str) -> str:
    """epochs.csv / steps.jsonl keys as words: 'val_pgd10' -> 'validation PGD-10'."""
    words = []
    for part in key.split("_"):
        words.append({"val": "validation", "train": "train", "adv": "adversarial", "acc": "accuracy",
                      "kl": "KL"}.get(part, attack_name(part)))
    text = " ".join(words)
    return text.replace("train ", "train: ", 1) if text.startswith("train ") else text


def training_figure(group: RunGroup | RunRecord):
    """The panels of `training_panels` side by side (mean line and a +-1 std band over the group's runs), on an
    integer epoch axis; None when no run logged anything. The caller closes the figure."""
    records = group.records if isinstance(group, RunGroup) else [group]
    label = group.label
    panels = training_panels(records)
    if not panels:
        return None
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.6), squeeze=False)
    runs = f" (mean ± std of {len(records)} runs)" if len(records) > 1 else ""
    for ax, (kind, panel) in zip(axes[0], panels.items()):
        scale = 100.0 if kind == "accuracy" else 1.0
        for key, curve in panel["curves"].items():
            xs = [c[0] for c in curve]
            means = [scale * c[1] for c in curve]
            line, = ax.plot(xs, means, marker="o" if panel["x"] == "epoch" else None, markersize=4,
                            label=_curve_label(key))
            stds = [scale * c[2] for c in curve]
            if any(not math.isnan(s) for s in stds):
                lower = [m - (0 if math.isnan(s) else s) for m, s in zip(means, stds)]
                upper = [m + (0 if math.isnan(s) else s) for m, s in zip(means, stds)]
                ax.fill_between(xs, lower, upper, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_xlabel("optimisation step" if panel["x"] == "step" else "epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if kind == "accuracy":
            ax.set(ylabel="accuracy (%)", title=f"{label}: accuracy per epoch{runs}")
        else:
            ylabel = "training loss (logged steps)" if panel["x"] == "step" else "training loss (mean over the epoch)"
            ax.set(ylabel=ylabel, title=f"{label}: training loss{runs}")
        ax.title.set_fontsize(10)
        ax.grid(alpha=0.3)
        # Below the axes, so that it never covers a curve.
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    fig.tight_layout()
    return fig


def plot_training(group: RunGroup | RunRecord, out: Path) -> bool:
    """`training_figure` written to `out`; False, and no file, when no run logged anything."""
    fig = training_figure(group)
    if fig is None:
        return False
    fig.savefig(out, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return True


def plot_tradeoff(points: Sequence[GroupPoint], out: Path) -> None:
    """Each group's mean (marker) with +-1 std bars on both axes over its seeds, its seeds as faint dots."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8.2, 5.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, p in enumerate(points):
        colour = colours[i % len(colours)]
        (cx, sx), (ry, sy) = p.clean_mean_std, p.robust_mean_std
        if len(p.clean) > 1:
            ax.scatter([100 * c for c in p.clean], [100 * r for r in p.robust], s=18, color=colour, alpha=0.35,
                       linewidths=0)
        n = f", n = {len(p.clean)}" if len(p.clean) > 1 else ""
        ax.errorbar(100 * cx, 100 * ry, xerr=None if math.isnan(sx) else 100 * sx,
                    yerr=None if math.isnan(sy) else 100 * sy, fmt="o", markersize=7, capsize=3, color=colour,
                    label=f"{p.label}: {attack_name(p.attack)}{n}")
    several = any(len(p.clean) > 1 for p in points)
    ax.set(xlabel="clean accuracy (%)", ylabel="robust accuracy (%), attack in the legend",
           title="clean vs robust accuracy" + (" (mean ± std over seeds; dots: single runs)" if several else ""))
    ax.title.set_fontsize(10)
    ax.grid(alpha=0.3)
    # Beside the axes: a legend inside would sit on some point.
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)


def eps_curves(groups: Sequence[RunGroup]) -> list[tuple[str, list[tuple[float, float, float, int]]]]:
    """(label, [(eps, mean accuracy, std, runs)]) per group, sweep file name and model, over the group's runs."""
    curves = []
    for group in groups:
        by_curve: dict[tuple[str, str], dict[float, list[float]]] = {}
        for r in group.records:
            for file, data in r.sweeps:
                for model, sweep in data["models"].items():
                    label = group.label if len(data["models"]) == 1 else f"{group.label} {model}"
                    if len({f for f, _ in r.sweeps}) > 1:
                        label += f" ({file})"
                    for p in sweep["curve"]:
                        by_curve.setdefault((label, file), {}).setdefault(float(p["eps"]), []).append(p["accuracy"])
        for (label, _), by_eps in by_curve.items():
            curves.append((label, [(eps, *mean_std(v), len(v)) for eps, v in sorted(by_eps.items())]))
    return curves


def plot_accuracy_vs_eps(curves: Sequence[tuple[str, list[tuple[float, float, float, int]]]], out: Path,
                         norm: str | None = None) -> None:
    """`eps_curves`: mean accuracy against eps, with +-1 std bars where a group has several runs."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8.2, 5.2))
    for label, curve in curves:
        stds = [None if math.isnan(c[2]) else 100 * c[2] for c in curve]
        runs = max(c[3] for c in curve)
        ax.errorbar([c[0] for c in curve], [100 * c[1] for c in curve],
                    yerr=[s or 0.0 for s in stds] if any(s is not None for s in stds) else None, marker="o",
                    markersize=4, capsize=3, label=label + (f" (mean ± std, n = {runs})" if runs > 1 else ""))
    radius = {"linf": "Linf", "l2": "L2"}.get(norm or "", "Linf or L2")
    ax.set(xlabel=f"eps ({radius} radius, pixels in [0, 1])", ylabel="PGD accuracy (%)",
           title="accuracy against eps")
    ax.title.set_fontsize(10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(out, dpi=110, bbox_inches="tight")
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
        from .run_analysis import sweep_checkpoint

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
                other = [f"{k} {_pct(v)}" for k, v in res.items() if _ACCURACY_KEY.fullmatch(k)
                         and k not in ("clean", "pgd20", "cw20", "autoattack")]
                if "same_weights_as" in res:  # trainer/eval/robustness.py: evaluated once, numbers copied
                    other.insert(0, f"same weights as {res['same_weights_as']}")
                rows[-1].append(", ".join(other))
                findings += [(f"{r.name}/{file} model {model}", f) for f in result_checks(res)]
    md.append("## Evaluations (accuracy %)\n")
    md.append(_md_table(["run", "file", "model", "points", "eps", "clean", "pgd20", "cw20", "autoattack", "other"],
                        rows) + "\n" if rows else ("No eval_*.json files: run "
                                                   "`python -m generalist_trainer eval RUN`.\n"))

    # Trade-off
    groups = group_runs(records)
    points = [(r.label, h) for r in records if (h := headline(r)) is not None]
    group_points = tradeoff_points(groups)
    md.append("## Clean vs robust trade-off\n")
    if points:
        png = figures / "tradeoff.png"
        plot_tradeoff(group_points, png)
        md.append(f"![clean vs robust]({rel(png)})\n")
        md.append("Runs that differ only in their seed form one method: its mean with ± one standard deviation "
                  "(n - 1) over the seeds, the seeds as faint dots. Each run contributes the shipped model of its "
                  "eval file with AutoAttack and the most points (else the most points); robust = the attack all "
                  "runs of the method were evaluated with that leaves the lowest mean accuracy.\n")
        md.append(_md_table(["method", "runs", "seeds", "clean %", "robust %", "attack", "points"],
                            [[p.label, len(p.runs), ", ".join(map(str, p.seeds)), _pct_spread(p.clean),
                              _pct_spread(p.robust), attack_name(p.attack),
                              "/".join(str(n) for n in sorted(set(p.num_points)))] for p in group_points]) + "\n")
        md.append("Per run (robust = the lowest attack accuracy in that file):\n")
        md.append(_md_table(["run", "file", "model", "points", "clean %", "robust %", "attack"],
                            [[label, p["file"], p["model"], p["num_points"], _pct(p["clean"]), _pct(p["robust"]),
                              attack_name(p["robust_attack"])] for label, p in points]) + "\n")
    else:
        md.append("No evaluation with both clean and attack accuracy.\n")

    # Accuracy against eps
    curves, sweep_rows = eps_curves(groups), []
    for r in records:
        for file, data in r.sweeps:
            for model, sweep in data["models"].items():
                label = r.label if len(data["models"]) == 1 else f"{r.label} {model}"
                sweep_rows.append([label, file, sweep.get("num_points", "?"), sweep.get("attack", "?"),
                                   _pct(sweep.get("clean")),
                                   ", ".join(f"{p['eps']:.4g}: {_pct(p['accuracy'])}" for p in sweep["curve"])])
                findings += [(f"{r.name}/{file} model {model}", f) for f in sweep.get("sanity", [])]
    md.append("## Accuracy against eps\n")
    if curves:
        png = figures / "accuracy_vs_eps.png"
        norms = {data.get("norm") for r in records for _, data in r.sweeps}
        plot_accuracy_vs_eps(curves, png, norm=norms.pop() if len(norms) == 1 else None)
        md.append(f"![accuracy against eps]({rel(png)})\n")
        md.append(_md_table(["run", "file", "points", "attack", "clean %", "eps: accuracy %"], sweep_rows) + "\n")
    else:
        md.append("No sweep_*.json files: run `python -m generalist_trainer sweep RUN` "
                  "(or `report --sweep-points N`).\n")

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
            raise ConfigError(f"{file}: not a separation result; expected the JSON of "
                              "`python -m generalist_trainer separation`")
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

    # Training curves: one figure per method (mean and a ±1 std band over its seeds).
    md.append("## Training curves\n")
    for group in groups:
        names = ", ".join(r.name for r in group.records)
        png = figures / f"training_{_slug(group.records[0].name if len(group.records) == 1 else group.label)}.png"
        heading = group.label if names == group.label else f"{group.label} ({names})"
        if plot_training(group, png):
            md.append(f"### {heading}\n\n![training curves of {names}]({rel(png)})\n")
        else:
            md.append(f"### {heading}\n\nNo epochs.csv or steps.jsonl.\n")

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
