"""Command line: `python -m trainer train | eval | export`.

    python -m trainer train --config configs/fashion_mnist_generalist.yaml train.epochs=3 attack.eps=0.1
    python -m trainer train --resume runs/fmnist_generalist          # continue exactly where it stopped
    python -m trainer eval runs/fmnist_generalist --which best eval.num_points=1000
    python -m trainer export runs/fmnist_generalist --out exported/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from trainer.checkpoint import LAST, load_checkpoint
from trainer.config import (
    EvalConfig,
    RunConfig,
    apply_overrides,
    config_from_dict,
    from_dict,
    load_config,
    to_dict,
)
from trainer.errors import ConfigError, TrainerError


def _resume_config(run_dir: Path, overrides: list[str]) -> RunConfig:
    """The checkpoint's own config; only train.* (not seed) and eval.* may change on resume."""
    state = load_checkpoint(run_dir / LAST)
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        allowed = key.startswith(("train.", "eval.")) or key == "data.data_dir"
        if not allowed or key in ("train.seed", "train.out_dir"):
            raise ConfigError(f"override {item!r}: a resumed run keeps its config; only train.* "
                              f"(except seed and out_dir), eval.* and data.data_dir may change")
    data = apply_overrides(state["config"], overrides)
    data["train"]["out_dir"] = str(run_dir)
    return config_from_dict(data)


def _eval_overrides(overrides: list[str], base: EvalConfig) -> EvalConfig:
    for item in overrides:
        if not item.split("=", 1)[0].strip().startswith("eval."):
            raise ConfigError(f"override {item!r}: eval and export accept only eval.* overrides")
    data = apply_overrides({"eval": to_dict(base)}, overrides)["eval"]
    return from_dict(EvalConfig, data, prefix="eval.")


def cmd_train(args: argparse.Namespace) -> int:
    from trainer.evaluation import evaluate_checkpoint, results_table
    from trainer.training import train

    if args.data_dir:
        args.overrides = [*args.overrides, f"data.data_dir={args.data_dir}"]
    if args.resume:
        cfg = _resume_config(Path(args.resume), args.overrides)
    else:
        cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    result = train(cfg, resume=bool(args.resume))
    if result.finished and not args.no_eval:
        report = evaluate_checkpoint(result.run_dir, which="best")
        print(results_table(report))
        print(f"results: {report['written_to']}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from trainer.checkpoint import resolve_checkpoint
    from trainer.evaluation import evaluate_checkpoint, results_table

    state = load_checkpoint(resolve_checkpoint(args.run, args.which))
    base = from_dict(EvalConfig, state["config"]["eval"], prefix="eval.")
    report = evaluate_checkpoint(args.run, which=args.which, eval_cfg=_eval_overrides(args.overrides, base),
                                 device=args.device, out=Path(args.out) if args.out else None)
    print(results_table(report))
    print(f"results: {report['written_to']}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from trainer.evaluation import export_checkpoint

    weights = export_checkpoint(args.run, Path(args.out), which=args.which)
    print(f"exported {weights} and {weights.parent / 'config.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model (then evaluate the best checkpoint on the test set)")
    p.add_argument("--config", help="YAML preset (configs/*.yaml); defaults apply to fields it omits")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt")
    p.add_argument("--no-eval", action="store_true", help="skip the final test-set evaluation")
    p.add_argument("--print-config", action="store_true", help="print the resolved config first")
    p.add_argument("--data-dir", help="dataset folder (same as data.data_dir=PATH)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=3 attack.eps=0.1")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a run's checkpoint: clean, PGD, CW, AutoAttack")
    p.add_argument("run", help="run folder or checkpoint file")
    p.add_argument("--which", default="best", choices=["best", "last"], help="checkpoint of a run folder")
    p.add_argument("--device", help="override the device (cpu, cuda, cuda:N)")
    p.add_argument("--out", help="JSON output path (default: RUN/eval_<checkpoint>.json)")
    p.add_argument("overrides", nargs="*", help="eval.* overrides, e.g. eval.num_points=200")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("export", help="export the shipped model as safetensors + config.json")
    p.add_argument("run", help="run folder or checkpoint file")
    p.add_argument("--which", default="best", choices=["best", "last"])
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may come after options (`eval RUN --which last eval.num_points=16`): argparse leaves
    # such trailing positionals unparsed, so they are collected here; unknown options stay errors.
    args, extra = parser.parse_known_args(argv)
    unknown = [e for e in extra if e.startswith("-") or "=" not in e]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if hasattr(args, "overrides"):
        args.overrides = [*args.overrides, *extra]
    try:
        return args.func(args)
    except TrainerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
