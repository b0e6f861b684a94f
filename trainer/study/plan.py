"""A study plan: a declared grid of training runs (methods x seeds) and the evaluations of each, read from YAML.

    name: fashion_mnist_study
    runs_dir: runs/study              # checkpoints (large; not committed)
    results_dir: results/study        # what is committed: configs, epochs.csv, logs, eval JSONs
    workers: 2                        # one-thread processes side by side
    threads: 1
    order: by_seed                    # or trainings_first (the default); see StudyPlan.order
    overrides: [train.epochs=8]       # applied to every run, before the run's own
    runs:
      - {name: pgd_at, config: configs/fashion_mnist_pgd_at.yaml, seeds: [0, 1, 2], overrides: [...]}
    evaluations:
      - {name: test_last, which: last, overrides: [eval.num_points=10000, "eval.attacks=[clean, pgd, cw]"]}
      - {name: aa_last, which: last, seeds: [0], after_grid: true, overrides: [...]}   # seeds / runs: only those
    summary: {baseline: pgd_at, columns: [{name: clean, eval: test_last, key: clean}, ...]}
                                      # optional summary.folder: where the summary goes (default: results_dir)

The plan expands into units (one training, or one evaluation of one run) whose outputs say whether they are
done (trainer/study/runner.py runs them). Paths in the plan are relative to the folder the study runs from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError

WHICH = ("best", "last")
ORDERS = ("trainings_first", "by_seed")


@dataclass(frozen=True)
class RunSpec:
    """One method of the grid: a preset plus overrides, trained once per seed."""

    name: str
    config: str
    seeds: tuple[int, ...] = (0,)
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class EvalSpec:
    """One evaluation of each finished run's checkpoint (`python -m generalist_trainer eval`), written to
    eval_<name>.json."""

    name: str
    which: str = "last"
    overrides: tuple[str, ...] = ()
    # Only these seeds / these run names (empty: all); e.g. the standard AutoAttack on seed 0 only.
    seeds: tuple[int, ...] = ()
    runs: tuple[str, ...] = ()
    # Per run name, more overrides (e.g. Generalist: "eval.models=[global]").
    run_overrides: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # which=best only: the name of an evaluation of the last checkpoint with the same settings; when best.pt and
    # last.pt hold the same networks (the last epoch was the best), its results are reused instead of recomputed.
    same_as: str | None = None
    # Start only after every unit without it (e.g. the standard AutoAttack, an hour per model on one core).
    after_grid: bool = False

    def applies_to(self, run: str, seed: int) -> bool:
        return (not self.seeds or seed in self.seeds) and (not self.runs or run in self.runs)


@dataclass(frozen=True)
class Column:
    """One figure of the summary: `key` of an eval JSON's model entry, or of the last row of epochs.csv."""

    name: str
    key: str
    eval: str | None = None  # None: read epochs.csv
    # epochs.csv only: "last" row, or the row with the highest val_score (the selected checkpoint's epoch).
    row: str = "last"
    # How the trade-off plot's axis names it (None: the name).
    label: str | None = None


@dataclass(frozen=True)
class SummarySpec:
    baseline: str | None = None
    columns: tuple[Column, ...] = ()
    # The trade-off plot: x and y column names.
    tradeoff: tuple[str, str] | None = None
    # Where summary.json / .md / tradeoff.png go (None: results_dir). Two plans sharing one results folder (an
    # extension grid reusing a core grid's finished runs) each need their own, or one overwrites the other's.
    folder: Path | None = None


@dataclass(frozen=True)
class StudyPlan:
    name: str
    runs_dir: Path
    results_dir: Path
    runs: tuple[RunSpec, ...]
    evaluations: tuple[EvalSpec, ...] = ()
    overrides: tuple[str, ...] = ()
    workers: int = 2
    threads: int = 1
    # The order units start in. trainings_first: every training, then the evaluations in the plan's order.
    # by_seed: seed 0's trainings and evaluations, then seed 1's, ...: a study stopped part-way (a session's end, a
    # lost machine) leaves whole seeds finished rather than trainings nobody evaluated. Either way an evaluation
    # with after_grid waits for everything else, and a unit whose training is not done yet is passed over.
    order: str = "trainings_first"
    summary: SummarySpec = SummarySpec()
    source: Path | None = None

    def run_names(self) -> list[tuple[RunSpec, int, str]]:
        """(spec, seed, run folder name) of every training in grid order."""
        return [(spec, seed, f"{spec.name}_s{seed}") for spec in self.runs for seed in spec.seeds]


def _fail(path: Path, where: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"study plan {path}: '{where}' = {value!r}: expected {expected}")


def _strings(path: Path, where: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(path, where, value, "a list of strings")
    return tuple(value)


def _ints(path: Path, where: str, value: Any, default: tuple[int, ...]) -> tuple[int, ...]:
    if value is None:
        return default
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise _fail(path, where, value, "a list of integers")
    return tuple(value)


def _mapping(path: Path, where: str, value: Any, allowed: set[str]) -> dict:
    if not isinstance(value, dict):
        raise _fail(path, where, value, "a mapping")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise _fail(path, f"{where}.{unknown[0]}", value[unknown[0]], f"one of the keys {sorted(allowed)}")
    return value


def _name(path: Path, where: str, value: Any) -> str:
    if not isinstance(value, str) or not value or not value.replace("_", "").replace("-", "").isalnum():
        raise _fail(path, where, value, "a name of letters, digits, '_' and '-'")
    return value


def load_plan(path: str | Path) -> StudyPlan:
    """Read and check a study plan; ConfigError names the file and the field."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"study plan {path}: no such file") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"study plan {path}: not a readable YAML file ({type(exc).__name__})") from None
    top = _mapping(path, "top level", data, {"name", "runs_dir", "results_dir", "workers", "threads", "order",
                                              "overrides", "runs", "evaluations", "summary"})
    for key in ("name", "runs_dir", "results_dir", "runs"):
        if key not in top:
            raise _fail(path, key, None, "present")
    runs = []
    if not isinstance(top["runs"], list) or not top["runs"]:
        raise _fail(path, "runs", top["runs"], "a non-empty list")
    for i, item in enumerate(top["runs"]):
        r = _mapping(path, f"runs[{i}]", item, {"name", "config", "seeds", "overrides"})
        if not isinstance(r.get("config"), str):
            raise _fail(path, f"runs[{i}].config", r.get("config"), "a preset path")
        runs.append(RunSpec(_name(path, f"runs[{i}].name", r.get("name")), r["config"],
                            _ints(path, f"runs[{i}].seeds", r.get("seeds"), (0,)),
                            _strings(path, f"runs[{i}].overrides", r.get("overrides"))))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise _fail(path, "runs", names, "distinct run names")
    evals = []
    for i, item in enumerate(top.get("evaluations") or []):
        e = _mapping(path, f"evaluations[{i}]", item, {"name", "which", "overrides", "seeds", "runs",
                                                      "run_overrides", "same_as", "after_grid"})
        which = e.get("which", "last")
        if which not in WHICH:
            raise _fail(path, f"evaluations[{i}].which", which, f"one of {WHICH}")
        same_as = e.get("same_as")
        earlier = {x.name: x for x in evals}
        if same_as is not None and (which != "best" or same_as not in earlier or earlier[same_as].which != "last"
                                    or earlier[same_as].overrides != tuple(e.get("overrides") or ())):
            raise _fail(path, f"evaluations[{i}].same_as", same_as, "with which: best, the name of an earlier "
                        "evaluation of the last checkpoint with the same overrides")
        per_run = e.get("run_overrides") or {}
        if not isinstance(per_run, dict) or not set(per_run) <= set(names):
            raise _fail(path, f"evaluations[{i}].run_overrides", per_run, f"a mapping from run names {names}")
        after_grid = e.get("after_grid", False)
        if not isinstance(after_grid, bool):
            raise _fail(path, f"evaluations[{i}].after_grid", after_grid, "true or false")
        evals.append(EvalSpec(_name(path, f"evaluations[{i}].name", e.get("name")), which,
                              _strings(path, f"evaluations[{i}].overrides", e.get("overrides")),
                              _ints(path, f"evaluations[{i}].seeds", e.get("seeds"), ()),
                              _strings(path, f"evaluations[{i}].runs", e.get("runs")),
                              {k: _strings(path, f"evaluations[{i}].run_overrides.{k}", v)
                               for k, v in per_run.items()}, same_as, after_grid))
    summary = _summary(path, top.get("summary") or {}, names, {e.name for e in evals})
    for key in ("workers", "threads"):
        value = top.get(key, 1 if key == "threads" else 2)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise _fail(path, key, value, "an integer >= 1")
    order = top.get("order", "trainings_first")
    if order not in ORDERS:
        raise _fail(path, "order", order, f"one of {ORDERS}")
    return StudyPlan(name=_name(path, "name", top["name"]), runs_dir=Path(top["runs_dir"]),
                     results_dir=Path(top["results_dir"]), runs=tuple(runs), evaluations=tuple(evals),
                     overrides=_strings(path, "overrides", top.get("overrides")),
                     workers=top.get("workers", 2), threads=top.get("threads", 1), order=order, summary=summary,
                     source=path)


def _summary(path: Path, data: Any, run_names: list[str], eval_names: set[str]) -> SummarySpec:
    s = _mapping(path, "summary", data, {"baseline", "columns", "tradeoff", "folder"})
    baseline = s.get("baseline")
    if baseline is not None and baseline not in run_names:
        raise _fail(path, "summary.baseline", baseline, f"one of the run names {run_names}")
    columns = []
    for i, item in enumerate(s.get("columns") or []):
        c = _mapping(path, f"summary.columns[{i}]", item, {"name", "key", "eval", "row", "label"})
        if c.get("eval") is not None and c["eval"] not in eval_names:
            raise _fail(path, f"summary.columns[{i}].eval", c["eval"], f"one of the evaluations {sorted(eval_names)}")
        if c.get("row", "last") not in ("last", "best"):
            raise _fail(path, f"summary.columns[{i}].row", c.get("row"), "'last' or 'best'")
        if not isinstance(c.get("key"), str):
            raise _fail(path, f"summary.columns[{i}].key", c.get("key"), "a result key such as 'clean' or 'pgd20'")
        if c.get("label") is not None and not isinstance(c["label"], str):
            raise _fail(path, f"summary.columns[{i}].label", c["label"], "a string")
        columns.append(Column(_name(path, f"summary.columns[{i}].name", c.get("name")), c["key"], c.get("eval"),
                              c.get("row", "last"), c.get("label")))
    tradeoff = s.get("tradeoff")
    if tradeoff is not None:
        names = {c.name for c in columns}
        if not (isinstance(tradeoff, list) and len(tradeoff) == 2 and set(tradeoff) <= names):
            raise _fail(path, "summary.tradeoff", tradeoff, f"two column names from {sorted(names)}")
        tradeoff = (tradeoff[0], tradeoff[1])
    folder = s.get("folder")
    if folder is not None and (not isinstance(folder, str) or not folder):
        raise _fail(path, "summary.folder", folder, "a folder path")
    return SummarySpec(baseline=baseline, columns=tuple(columns), tradeoff=tradeoff,
                       folder=Path(folder) if folder else None)
