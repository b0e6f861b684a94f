"""Run a study plan (trainer/study/plan.py): trainings and evaluations as `python -m generalist_trainer` processes, a
few one-thread workers side by side, every finished unit skipped on the next call.

A unit is done when its output exists: a training when its run folder holds DONE (or, on a machine without the
checkpoints, when the committed results already hold every evaluation that needs it); an evaluation when its
JSON is in the results folder. A stopped training resumes from its last checkpoint; a stopped AutoAttack resumes
from the state file beside its JSON, which lives in the results folder so that it can be committed and the
study continued on another machine. Trainings are deterministic on the CPU, so a run retrained elsewhere must
reproduce its committed epochs.csv (timings aside); when it does not, its evaluations are not mixed with the
old ones: the unit fails and says so.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from .plan import EvalSpec, RunSpec, StudyPlan

log = logging.getLogger(__name__)

# Copied from the run folder into the results folder after a training (no checkpoints: they are large).
RUN_FILES = ("config.yaml", "epochs.csv", "steps.jsonl")
# The marker of a training whose results were copied: commit, seconds, host.
TRAINED = "trained.json"
# epochs.csv columns that measure time rather than the model (ignored when a retrain is compared).
_TIMING_COLUMNS = ("validation_seconds", "epoch_seconds", "images_per_second")
POLL_SECONDS = 2.0


@dataclass
class Unit:
    kind: str  # "train" | "eval"
    run: str  # run folder name, e.g. pgd_at_s0
    spec: RunSpec
    seed: int
    evaluation: EvalSpec | None = None
    needs: list[Unit] = field(default_factory=list)
    status: str = "pending"  # pending | done | skipped | running | ok | failed | blocked
    seconds: float = 0.0

    @property
    def label(self) -> str:
        return f"train {self.run}" if self.kind == "train" else f"eval {self.run} {self.evaluation.name}"


class StudyRunner:
    def __init__(self, plan: StudyPlan, *, root: Path = Path("."), python: str = sys.executable,
                 workers: int | None = None, echo: Callable[[str], None] = log.info):
        self.plan = plan
        self.root = root
        self.python = python
        self.workers = workers or plan.workers
        self.echo = echo
        self.units = self._expand()

    # --- paths -----------------------------------------------------------------------------------------

    def run_dir(self, run: str) -> Path:
        return self.root / self.plan.runs_dir / run

    def result_dir(self, run: str) -> Path:
        return self.root / self.plan.results_dir / run

    def eval_json(self, unit: Unit) -> Path:
        return self.result_dir(unit.run) / f"eval_{unit.evaluation.name}.json"

    # --- the plan as units -----------------------------------------------------------------------------

    def _expand(self) -> list[Unit]:
        units: list[Unit] = []
        for spec, seed, run in self.plan.run_names():
            training = Unit("train", run, spec, seed)
            evals = {e.name: Unit("eval", run, spec, seed, e, [training]) for e in self.plan.evaluations
                     if e.applies_to(spec.name, seed)}
            for unit in evals.values():
                if unit.evaluation.same_as in evals:
                    unit.needs.append(evals[unit.evaluation.same_as])
            units += [training, *evals.values()]
        # The plan's order (StudyPlan.order); within a group, trainings in grid order, then evaluations in the
        # plan's order (the cheap ones first). sorted() is stable, so ties keep grid order.
        order = {e.name: i for i, e in enumerate(self.plan.evaluations)}
        by_seed = self.plan.order == "by_seed"

        def rank(u: Unit) -> tuple:
            deferred = u.evaluation is not None and u.evaluation.after_grid
            return (deferred, u.seed if by_seed else 0, u.kind != "train",
                    order[u.evaluation.name] if u.evaluation else 0)

        return sorted(units, key=rank)

    def _is_done(self, unit: Unit) -> bool:
        if unit.kind == "eval":
            return self.eval_json(unit).is_file()
        if (self.run_dir(unit.run) / "DONE").is_file() and (self.result_dir(unit.run) / TRAINED).is_file():
            return True
        # No checkpoint here, but nothing left needs one: the results were committed by an earlier machine.
        evals = [u for u in self.units if u.kind == "eval" and u.run == unit.run]
        return (self.result_dir(unit.run) / TRAINED).is_file() and all(self._is_done(u) for u in evals)

    def refresh(self) -> list[Unit]:
        """Mark what is done already; returns the units left to run."""
        for unit in self.units:
            if unit.status == "pending" and self._is_done(unit):
                unit.status = "done"
        return [u for u in self.units if u.status == "pending"]

    # --- commands ----------------------------------------------------------------------------------------

    def command(self, unit: Unit) -> list[str]:
        run_dir = self.run_dir(unit.run)
        base = [self.python, "-m", "generalist_trainer"]
        if unit.kind == "train":
            if (run_dir / "last.pt").is_file():
                return [*base, "train", "--resume", str(run_dir), "--no-eval"]
            return [*base, "train", "--config", unit.spec.config, "--no-eval", *self.plan.overrides,
                    *unit.spec.overrides, f"train.seed={unit.seed}", f"train.out_dir={run_dir}",
                    f"train.threads={self.plan.threads}", "train.progress=false"]
        e = unit.evaluation
        return [*base, "eval", str(run_dir), "--which", e.which, "--out", str(self.eval_json(unit)), *e.overrides,
                *e.run_overrides.get(unit.spec.name, ())]

    def log_path(self, unit: Unit) -> Path:
        name = "train.log" if unit.kind == "train" else f"eval_{unit.evaluation.name}.log"
        return self.result_dir(unit.run) / name

    def _environment(self) -> dict[str, str]:
        threads = str(self.plan.threads)
        return {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"}

    def _start(self, unit: Unit) -> subprocess.Popen:
        self.result_dir(unit.run).mkdir(parents=True, exist_ok=True)
        logfile = self.log_path(unit).open("a")
        logfile.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(self.command(unit))}\n")
        logfile.flush()
        return subprocess.Popen(self.command(unit), cwd=self.root, stdout=logfile, stderr=subprocess.STDOUT,
                                env=self._environment())

    def _after_training(self, unit: Unit, seconds: float) -> None:
        """Copy the run's small files into the results folder, checking a retrain against committed results."""
        run_dir, result_dir = self.run_dir(unit.run), self.result_dir(unit.run)
        committed = result_dir / "epochs.csv"
        if (result_dir / TRAINED).is_file() and committed.is_file():
            old, new = _model_columns(committed), _model_columns(run_dir / "epochs.csv")
            if old != new:
                raise ConfigError(f"study: {unit.run} retrained here does not reproduce the committed "
                                  f"{committed} (losses or accuracies differ); move that results folder away to "
                                  "keep the old evaluations apart, then re-run")
        for name in RUN_FILES:
            if (run_dir / name).is_file():
                shutil.copyfile(run_dir / name, result_dir / name)
        marker = {"commit": git_commit(self.root), "seconds": round(seconds, 1), "host": os.uname().nodename,
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (result_dir / TRAINED).write_text(json.dumps(marker, indent=1) + "\n")

    def _reuse_last(self, unit: Unit) -> bool:
        """An evaluation of best.pt whose networks equal last.pt's: copy the last checkpoint's results."""
        same_as = unit.evaluation.same_as if unit.evaluation else None
        if same_as is None:
            return False
        run_dir = self.run_dir(unit.run)
        if not same_networks(run_dir / "best.pt", run_dir / "last.pt"):
            return False
        source = self.result_dir(unit.run) / f"eval_{same_as}.json"
        report = json.loads(source.read_text())
        report.update({"same_networks_as": same_as, "checkpoint": str(run_dir / "best.pt")})
        self.eval_json(unit).write_text(json.dumps(report, indent=2))
        return True

    # --- the pool ----------------------------------------------------------------------------------------

    def run(self) -> int:
        """Run every unit that is not done; 0 when all succeeded, 1 when some failed (the rest still ran)."""
        todo = self.refresh()
        self.echo(f"study {self.plan.name}: {len(self.units)} units, {len(self.units) - len(todo)} done already, "
                  f"{len(todo)} to run on {self.workers} worker(s)")
        running: dict[int, tuple[Unit, subprocess.Popen, float]] = {}
        try:
            while True:
                for unit in todo:
                    if unit.status == "pending" and any(n.status in ("failed", "blocked") for n in unit.needs):
                        unit.status = "blocked"
                ready = [u for u in todo if u.status == "pending"
                         and all(n.status in ("done", "ok") for n in u.needs)]
                while ready and len(running) < self.workers:
                    unit = ready.pop(0)
                    if self._reuse_last(unit):
                        self.echo(f"    ok {unit.label}: best.pt holds the networks of last.pt, results of "
                                  f"{unit.evaluation.same_as} reused")
                        unit.status = "ok"
                        continue
                    unit.status = "running"
                    proc = self._start(unit)
                    running[proc.pid] = (unit, proc, time.monotonic())
                    self.echo(f"start {unit.label}")
                if not running:
                    break
                time.sleep(POLL_SECONDS)
                for pid, (unit, proc, started) in list(running.items()):
                    if proc.poll() is None:
                        continue
                    del running[pid]
                    unit.seconds = time.monotonic() - started
                    unit.status = "ok" if proc.returncode == 0 else "failed"
                    if unit.status == "ok" and unit.kind == "train":
                        try:
                            self._after_training(unit, unit.seconds)
                        except ConfigError as exc:
                            unit.status = "failed"
                            self.echo(str(exc))
                    left = sum(u.status == "pending" for u in todo)
                    why = "" if unit.status == "ok" else f" (exit {proc.returncode}; log {self.log_path(unit)})"
                    self.echo(f"{unit.status:>6} {unit.label} in {unit.seconds / 60:.1f} min{why}; {left} waiting, "
                              f"{len(running)} running")
        except KeyboardInterrupt:
            # The children got the same SIGINT from the terminal; wait for them to checkpoint and stop.
            for _, proc, _ in running.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT)
            for _, proc, _ in running.values():
                proc.wait()
            raise
        failed = [u for u in self.units if u.status in ("failed", "blocked")]
        for unit in failed:
            self.echo(f"{unit.status}: {unit.label} (log {self.log_path(unit)})")
        return 1 if failed else 0


def _model_columns(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return [{k: v for k, v in row.items() if k not in _TIMING_COLUMNS} for row in csv.DictReader(f)]


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def same_networks(a: Path, b: Path) -> bool:
    """Whether two checkpoints hold bit-identical networks (parameters and buffers)."""
    import torch

    from ..checkpoint import load_checkpoint

    if not (a.is_file() and b.is_file()):
        return False
    first, second = load_checkpoint(a)["networks"], load_checkpoint(b)["networks"]
    if first.keys() != second.keys():
        return False
    for name in first:
        x, y = first[name], second[name]
        if x.keys() != y.keys() or not all(torch.equal(x[k], y[k]) for k in x):
            return False
    return True
