"""Command line: `python -m generalist_trainer train | eval | export | sweep | lipschitz | separation | report | study`.

    python -m generalist_trainer train --config configs/fashion_mnist_generalist.yaml train.epochs=3 attack.eps=0.1
    python -m generalist_trainer train --resume runs/fmnist_generalist          # continue exactly where it stopped
    python -m generalist_trainer train --resume runs/fmnist_generalist --change-length train.epochs=150
    python -m generalist_trainer eval runs/fmnist_generalist --which best eval.num_points=1000
    python -m generalist_trainer eval runs/fmnist_generalist --split train eval.num_points=1000   # train-test gaps
    python -m generalist_trainer export runs/fmnist_generalist --out exported/
    python -m generalist_trainer eval --model-export exported/ eval.num_points=1000    # no run folder needed
    python -m generalist_trainer sweep runs/fmnist_generalist --num-points 500      # PGD accuracy against eps
    python -m generalist_trainer lipschitz runs/fmnist_generalist --split both --num-points 1000
    python -m generalist_trainer separation --dataset fashion-mnist --eps 0.1       # whole dataset, GPU when present
    python -m generalist_trainer report runs/table/* --out reports/table.md
    python -m generalist_trainer study configs/studies/fashion_mnist.yaml           # a resumable grid with intervals
    python -m generalist_trainer profile --config configs/fashion_mnist_generalist.yaml --steps 5 --out trace.json
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import shlex
import sys
from pathlib import Path
from typing import NoReturn

import yaml

from .checkpoint import LAST, check_output_file, check_output_folder, load_checkpoint
from .config import (
    LOADERS,
    EvalConfig,
    apply_overrides,
    config_from_dict,
    from_dict,
    load_config,
    to_dict,
)
from .errors import CheckpointError, ConfigError, Interrupted, TrainerError
from .resume_config import resumed_config


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line (the project's `error: ...`, exit 2) rather than usage plus message."""

    def error(self, message: str) -> NoReturn:
        _usage_error(f"{message} (see: {self.prog} --help)")


def _usage_error(message: str) -> NoReturn:
    # SystemExit(2), as argparse itself exits on a bad command line.
    print(f"error: {_one_line(message)}", file=sys.stderr)
    sys.exit(2)


def _eval_overrides(overrides: list[str], state: dict | None) -> EvalConfig:
    """The checkpoint's eval config (the defaults for an export: `state` None) with eval.* overrides, validated
    with the rest of its config."""
    for item in overrides:
        if not item.split("=", 1)[0].strip().startswith("eval."):
            raise ConfigError(f"override {item!r}: eval and export accept only eval.* overrides")
    base = EvalConfig() if state is None else from_dict(EvalConfig, state["config"]["eval"], prefix="eval.")
    data = apply_overrides({"eval": to_dict(base)}, overrides)["eval"]
    eval_cfg = from_dict(EvalConfig, data, prefix="eval.")
    config_from_dict({**({} if state is None else state["config"]), "eval": to_dict(eval_cfg)})
    return eval_cfg


def _is_rank0() -> bool:
    from .distributed import launch_env

    return launch_env().rank == 0


def cmd_train(args: argparse.Namespace) -> int:
    from .eval.saved_models import evaluate_checkpoint, results_table
    from .run_lock import acquire_run_folder
    from .training import train

    if args.data_dir:
        args.overrides = [*args.overrides, f"data.data_dir={args.data_dir}"]
    if args.renamed_data_backend is not None:
        raise ConfigError(f"--data-backend {args.renamed_data_backend}: the flag was renamed to --loader (config "
                          "field 'data.backend' to 'data.loader')")
    if args.loader:
        args.overrides = [*args.overrides, f"data.loader={args.loader}"]
    if args.resume and args.config:
        raise ConfigError(f"--config {args.config} with --resume {args.resume}: a resumed run keeps the config "
                          "saved in its checkpoint; change train.* or eval.* with overrides instead")
    if args.change_length and not args.resume:
        raise ConfigError("--change-length: only with --resume (a new run takes its length from train.epochs)")
    if args.resume:
        run_dir, cfg = Path(args.resume), None
        if not run_dir.is_dir():
            raise CheckpointError(f"no usable checkpoint: {run_dir / LAST}: not found; the run folder {run_dir} "
                                  "does not exist")
    else:
        cfg = load_config(args.config, args.overrides)
        run_dir = Path(cfg.train.out_dir)
    # The whole command is one writer of the run folder, the final evaluation included; train() takes the same
    # lock again (it nests). Under torchrun rank 0 holds it. Taken before the resumed checkpoint is read, so a
    # run that is still training is reported as such, whatever else is wrong.
    try:
        lock = acquire_run_folder(run_dir, "train") if _is_rank0() else contextlib.nullcontext()
    except OSError as exc:
        raise ConfigError(f"config field 'train.out_dir' = {str(run_dir)!r}: cannot write there ({exc})") from None
    with lock:
        if cfg is None:
            cfg = resumed_config(run_dir, args.overrides, change_length=args.change_length)
        if args.print_config:
            print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        result = train(cfg, resume=bool(args.resume))
        if result.finished and not args.no_eval:
            try:
                report = evaluate_checkpoint(result.run_dir, which="best")
            except KeyboardInterrupt:
                raise Interrupted(f"interrupted during the final evaluation; training is complete; evaluate with: "
                                  f"python -m generalist_trainer eval {shlex.quote(str(result.run_dir))}") from None
            print(results_table(report))
            print(f"results: {report['written_to']}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .checkpoint import resolve_checkpoint
    from .eval.saved_models import evaluate_checkpoint, evaluate_export, results_table

    if args.run is not None and "=" in args.run and not Path(args.run).exists():
        # `eval --model-export DIR eval.num_points=16`: argparse hands the first override to the optional RUN.
        args.run, args.overrides = None, [args.run, *args.overrides]
    if (args.run is None) == (args.model_export is None):
        raise ConfigError("eval: give a run folder or checkpoint file, or --model-export DIR (one of them)")
    if args.model_export is None and (args.dataset or args.data_dir):
        raise ConfigError("eval: --dataset and --data-dir go with --model-export (a run evaluates on its own dataset)")
    if args.out:
        check_output_file(args.out, "eval --out")
    out = Path(args.out) if args.out else None
    if args.model_export is not None:
        if args.split != "test":
            raise ConfigError(f"--split {args.split} with --model-export: an export records no training split; "
                              "expected --split test")
        report = evaluate_export(args.model_export, eval_cfg=_eval_overrides(args.overrides, None),
                                 dataset=args.dataset, data_dir=args.data_dir, device=args.device, out=out)
    else:
        state = load_checkpoint(resolve_checkpoint(args.run, args.which))
        report = evaluate_checkpoint(args.run, which=args.which, eval_cfg=_eval_overrides(args.overrides, state),
                                     device=args.device, out=out, split=args.split)
    print(results_table(report))
    fired = sorted({f["check"] for findings in report["sanity"].values() for f in findings})
    print(f"sanity checks: {', '.join(fired) + ' fired (see the warnings above)' if fired else 'nothing fired'}")
    print(f"results: {report['written_to']}")
    return 0


def _check_out(args: argparse.Namespace, command: str) -> None:
    # Results are written at the end: a path that cannot take them is refused before the work.
    if args.out:
        check_output_file(args.out, f"{command} --out")


def cmd_export(args: argparse.Namespace) -> int:
    from .model_loading import export_checkpoint

    check_output_folder(args.out, "export --out")
    weights = export_checkpoint(args.run, Path(args.out), which=args.which)
    print(f"exported {weights} and {weights.parent / 'config.json'}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .analysis.run_analysis import sweep_checkpoint

    _check_out(args, "sweep")
    report = sweep_checkpoint(args.run, which=args.which, eps_values=args.eps, num_points=args.num_points,
                              steps=args.steps, seed=args.seed, models=args.models, device=args.device,
                              out=Path(args.out) if args.out else None)
    for name, res in report["models"].items():
        curve = "  ".join(f"{p['eps']:.4g}: {100 * p['accuracy']:.2f}" for p in res["curve"])
        print(f"{name}: clean {100 * res['clean']:.2f}  {res['attack']} accuracy % at eps  {curve}  "
              f"({len(res['sanity'])} sanity warning(s))")
    print(f"results: {report['written_to']}")
    return 0


def cmd_lipschitz(args: argparse.Namespace) -> int:
    from .analysis.run_analysis import lipschitz_checkpoint

    _check_out(args, "lipschitz")
    splits = ["train", "test"] if args.split == "both" else [args.split]
    report = lipschitz_checkpoint(args.run, which=args.which, splits=splits, num_points=args.num_points,
                                  variant=args.variant, eps=args.eps, batch_size=args.batch_size, seed=args.seed,
                                  models=args.models, device=args.device, out=Path(args.out) if args.out else None,
                                  progress=print)
    for name, by_split in report["models"].items():
        values = "  ".join(f"{s} {v['mean']:.4g} ({v['num_points']} points)" for s, v in by_split.items())
        print(f"{name}: local Lipschitz ({report['variant']}, eps {report['eps']:.4g})  {values}")
    print(f"results: {report['written_to']}")
    return 0


def cmd_separation(args: argparse.Namespace) -> int:
    from .analysis.run_analysis import dataset_separation

    _check_out(args, "separation")
    report = dataset_separation(args.dataset, data_dir=args.data_dir, eps_values=args.eps, device=args.device,
                                budget_bytes=None if args.memory_mb is None else int(args.memory_mb * 2**20),
                                train_points=args.train_points, test_points=args.test_points,
                                out=Path(args.out) if args.out else None)
    for direction in ("train_train", "test_train"):
        s = report[direction]
        verdict = ", ".join(f"{'' if v['separated'] else 'not '}2x{v['eps']:.4g}-separated"
                            for v in s["two_eps_separated"])
        print(f"{direction}: min {s['min_distance']:.4f}  mean {s['mean_distance']:.4f}  over {s['num_points']} "
              f"points, {s['conflicting_duplicates']} conflicting duplicate(s) dropped  {verdict}")
    print(f"results: {report['written_to']} ({report['seconds']} s on {report['device']})")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .analysis.report import write_report

    _check_out(args, "report")
    out = write_report(args.runs, Path(args.out), separation_files=args.separation or (),
                       sweep_points=args.sweep_points)
    print(f"report: {out} (figures in {out.parent / (out.stem + '_figures')})")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from .engine.profiling import profile_training

    _check_out(args, "profile")
    profile_training(load_config(args.config, args.overrides), steps=args.steps, warmup=args.warmup, out=args.out,
                     top_k=args.top)
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from .study import StudyRunner, load_plan, write_summary

    plan = load_plan(args.plan)
    status = 0
    if not args.summary_only:
        runner = StudyRunner(plan, python=args.python or sys.executable, workers=args.workers, echo=print)
        if args.dry_run:
            todo = runner.refresh()
            for unit in runner.units:
                print(f"{'run ' if unit in todo else 'done'}  {unit.label}: {' '.join(runner.command(unit))}")
            return 0
        status = runner.run()
    summary = write_summary(plan)
    print(Path(summary["written_to"][1]).read_text())
    print("summary: " + ", ".join(summary["written_to"]))
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m generalist_trainer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model (then evaluate the best checkpoint on the test set)")
    p.add_argument("--config", help="YAML preset (configs/*.yaml); defaults apply to fields it omits")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt")
    p.add_argument("--change-length", action="store_true",
                   help="with --resume and train.epochs=N: accept a new run length, which moves every schedule "
                        "knot (they are fractions of the run)")
    p.add_argument("--no-eval", action="store_true", help="skip the final test-set evaluation")
    p.add_argument("--print-config", action="store_true", help="print the resolved config first")
    p.add_argument("--data-dir", help="dataset folder (same as data.data_dir=PATH)")
    p.add_argument("--loader", choices=LOADERS,
                   help="training loader (same as data.loader=NAME): auto picks gpu when CUDA and the dataset "
                        "fits on it, else cpu; dali needs the 'dali' extra")
    # The flag's old name: refused with a pointer to the new one (trainer/config.py RENAMED_KEYS).
    p.add_argument("--data-backend", dest="renamed_data_backend", help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=3 attack.eps=0.1")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a run's checkpoint or an exported model: clean, PGD, CW, AutoAttack")
    p.add_argument("run", nargs="?", help="run folder or checkpoint file (or give --model-export)")
    p.add_argument("--model-export", metavar="DIR", help="evaluate the model of an export folder (model.safetensors "
                   "+ config.json, from `export`) on the test set of the dataset its config.json names")
    p.add_argument("--dataset", help="with --model-export: another dataset's test set (as data.dataset)")
    p.add_argument("--data-dir", help="with --model-export: the dataset folder (as data.data_dir)")
    p.add_argument("--which", default="best", choices=["best", "last"], help="checkpoint of a run folder")
    p.add_argument("--device", help="override the device (cpu, cuda, cuda:N)")
    p.add_argument("--out", help="JSON output path (default: RUN/eval_<checkpoint>.json; for --split train "
                   "RUN/train_eval_<checkpoint>.json; DIR/eval_model.json for --model-export DIR)")
    p.add_argument("--split", default="test", choices=["test", "train"],
                   help="points to attack: the test set, or the run's own training images without augmentation "
                        "(for generalisation gaps)")
    p.add_argument("overrides", nargs="*", help="eval.* overrides, e.g. eval.num_points=200")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("export", help="export the shipped model as safetensors + config.json")
    p.add_argument("run", help="run folder or checkpoint file")
    p.add_argument("--which", default="best", choices=["best", "last"])
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("sweep", help="PGD accuracy against eps (0 included) with sanity checks, as JSON")
    p.add_argument("run", help="run folder or checkpoint file")
    p.add_argument("--which", default="best", choices=["best", "last"], help="checkpoint of a run folder")
    p.add_argument("--eps", type=float, nargs="+", help="radii (pixel space; 0 is always added); "
                   "default 0, 1/4, 1/2, 1, 3/2, 2 x the run's attack.eps")
    p.add_argument("--num-points", type=int, default=1000, help="first N test points")
    p.add_argument("--steps", type=int, default=20, help="PGD steps (step = 2.5 eps / steps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models", nargs="+", help="which of the method's models (default: all)")
    p.add_argument("--device", help="override the device (cpu, cuda, cuda:N)")
    p.add_argument("--out", help="JSON output path (default: RUN/sweep_<checkpoint>.json)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("lipschitz", help="empirical local Lipschitz constant (spec/lipschitz.md), as JSON")
    p.add_argument("run", help="run folder or checkpoint file")
    p.add_argument("--which", default="best", choices=["best", "last"], help="checkpoint of a run folder")
    p.add_argument("--split", default="both", choices=["train", "test", "both"])
    p.add_argument("--num-points", type=int, default=1000, help="first N points of each split")
    p.add_argument("--variant", default="ascent", choices=["ascent", "authors_descent"],
                   help="ascent: the definition, best iterate kept; authors_descent: the released code, "
                        "which steps down the ratio (reproduces published numbers)")
    p.add_argument("--eps", type=float, help="ball radius (default: 0.1 MNIST-like, 0.031 CIFAR/SVHN, "
                   "else the run's attack.eps)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0, help="seed of the start noise")
    p.add_argument("--models", nargs="+", help="which of the method's models (default: all)")
    p.add_argument("--device", help="override the device (cpu, cuda, cuda:N)")
    p.add_argument("--out", help="JSON output path (default: RUN/lipschitz_<checkpoint>.json)")
    p.set_defaults(func=cmd_lipschitz)

    p = sub.add_parser("separation", help="Linf separation of a dataset: nearest differently labelled point")
    p.add_argument("--dataset", default="fashion-mnist", help="dataset name (as data.dataset)")
    p.add_argument("--data-dir", help="dataset folder (as data.data_dir)")
    p.add_argument("--eps", type=float, nargs="+", help="radii for the 2 eps verdict (default: the spec's for "
                   "the dataset)")
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda, cuda:N")
    p.add_argument("--memory-mb", type=float, help="working-memory budget of one block (default: 1024 MiB on "
                   "the CPU, half the free GPU memory)")
    p.add_argument("--train-points", type=int, help="only the first N training images (quick look)")
    p.add_argument("--test-points", type=int, help="only the first N test images (quick look)")
    p.add_argument("--out", help="JSON output path (default: separation_<dataset>.json)")
    p.set_defaults(func=cmd_separation)

    p = sub.add_parser("report", help="markdown report with PNG plots over one or more runs")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders")
    p.add_argument("--out", required=True, help="markdown file (figures go to <stem>_figures/ beside it)")
    p.add_argument("--separation", nargs="+", metavar="JSON", help="separation results to include")
    p.add_argument("--sweep-points", type=int, default=0,
                   help="first run `sweep` on N test points for runs without a sweep file (default 0: no)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("study", help="train and evaluate a declared grid (configs/studies/*.yaml) with one-thread "
                                     "workers, skipping finished units; then write the summary with intervals")
    p.add_argument("plan", help="study plan YAML (trainer/study/plan.py documents its fields)")
    p.add_argument("--workers", type=int, help="processes side by side (default: the plan's workers)")
    p.add_argument("--dry-run", action="store_true", help="print each unit, done or to run, and its command")
    p.add_argument("--summary-only", action="store_true", help="only (re)write the summary from the results")
    p.add_argument("--python", help="interpreter for the units (default: this one)")
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("profile", help="torch.profiler trace (Chrome JSON) of N training iterations, ranges per "
                                       "phase (data, attack, robust_update, natural_update, averaging)")
    p.add_argument("--config", help="YAML preset (configs/*.yaml); defaults apply to fields it omits")
    p.add_argument("--steps", type=int, default=5, help="recorded iterations (default 5)")
    p.add_argument("--warmup", type=int, help="unrecorded iterations first (default 2, or past the CUDA graph "
                                              "capture under engine.cuda_graphs)")
    p.add_argument("--out", default="trace.json", help="Chrome trace output path (default trace.json)")
    p.add_argument("--top", type=int, default=20, help="operators / kernels to print, by self time (default 20)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.batch_size=128 engine.two_streams=false")
    p.set_defaults(func=cmd_profile)
    return parser


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    # Overrides may come after options (`eval RUN --which last eval.num_points=16`): argparse leaves
    # such trailing positionals unparsed, so they are collected here; unknown options stay errors.
    args, extra = parser.parse_known_args(argv)
    unknown = [e for e in extra if e.startswith("-") or "=" not in e]
    if not hasattr(args, "overrides"):  # commands without dotted overrides must not drop them silently
        unknown = extra
    if unknown:
        _usage_error(f"unrecognized arguments: {' '.join(unknown)} (see: {parser.prog} {args.command} --help)")
    if hasattr(args, "overrides"):
        args.overrides = [*args.overrides, *extra]
    return args


def _one_line(text: str) -> str:
    return " ".join(text.split())


class _ConsoleHandler(logging.Handler):
    """The library's log records as the console lines it used to print: info to stdout, warnings and errors to
    stderr, the message alone. The stream is looked up per record: tests swap sys.stdout, and torchrun's ranks
    other than 0 point it at /dev/null (trainer/distributed.py)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stdout if record.levelno < logging.WARNING else sys.stderr
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def _console_logging():
    """While a command runs, the package's info and warnings reach the console; afterwards the logger is as it was
    (main() also runs inside other programs: tests, notebooks)."""
    package = logging.getLogger(__name__.split(".")[0])
    handler, level = _ConsoleHandler(), package.level
    package.addHandler(handler)
    package.setLevel(logging.INFO)
    try:
        yield
    finally:
        package.removeHandler(handler)
        package.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    """Run one command; every failure a user can cause is one line on stderr and exit code 2 (130: Ctrl-C)."""
    with _console_logging():
        return _run(argv)


def _run(argv: list[str] | None) -> int:
    try:
        args = _parse(argv)
        return args.func(args)
    except Interrupted as exc:
        print(_one_line(str(exc)), file=sys.stderr)
        return exc.exit_code
    except TrainerError as exc:
        print(f"error: {_one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted; files this command had finished writing are complete", file=sys.stderr)
        return Interrupted.exit_code
    except OSError as exc:
        # The file system failing under a command (disk full, permissions, I/O error) rather than a bug.
        problem = "no space left on device" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {_one_line(problem + where)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
