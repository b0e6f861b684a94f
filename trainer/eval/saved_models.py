"""The `eval` command on saved models: a run folder's checkpoint or an export folder -> the attacks of this package
(clean, PGD, CW, AutoAttack; sharded under torchrun) -> a JSON report beside it and the console table.

The rest of trainer/eval/ attacks models in memory; this module is the part that reads them from disk.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from pathlib import Path

import torch

from ..analysis.sanity import SanityFinding, model_checks, result_checks, warn_findings
from ..checkpoint import (
    atomic_write,
    check_output_file,
    load_export,
    resolve_checkpoint,
)
from ..config import AttackConfig, DataConfig, EvalConfig, RunConfig, to_dict, validate
from ..data import ArrayDataset, dataset_spec, load_dataset
from ..distributed import init_distributed, is_distributed, is_rank0, world_size
from ..errors import CheckpointError, ConfigError
from ..metrics import format_percent, table
from ..runtime import resolve_device
from ..session import dataset_tensors, session_from_checkpoint
from . import evaluate_models
from .progress import EvalProgress
from .robustness import SAME_WEIGHTS, autoattack_state_files
from .sharded import evaluate_across_ranks

# What `evaluate_checkpoint` can attack: the test set, or the run's own training images (without augmentation),
# for the generalisation gaps of spec/lipschitz.md.
EVAL_SPLITS = ("test", "train")
# The model sanity checks (trainer/analysis/sanity.py) look at the first points only: a few dozen show
# train-mode layers, zero gradients or a random forward, for the price of a few forward passes.
SANITY_POINTS = 64


def default_eval_path(checkpoint: Path, split: str = "test") -> Path:
    """RUN/eval_<checkpoint>.json for the test set; RUN/train_eval_<checkpoint>.json for the training split,
    a name outside eval_*.json so that tools reading test results (trainer/analysis/report.py) skip it."""
    prefix = "eval" if split == "test" else f"{split}_eval"
    return checkpoint.parent / f"{prefix}_{checkpoint.stem}.json"


def evaluate_checkpoint(run_or_file: str | Path, *, which: str = "best", eval_cfg: EvalConfig | None = None,
                        device: str | None = None, out: Path | None = None, split: str = "test",
                        progress: bool | None = None) -> dict:
    """Evaluate every model of a checkpoint (Generalist: global, robust, natural) on the first
    eval.num_points points of `split` (the test set by default; "train": the run's training images).

    Models with the same weights as an earlier one (after a Generalist sync: all three) are attacked once
    and marked `"same_weights_as": <that model>`. `progress`: a bar per attack stage on stderr
    (trainer/eval/progress.py; rank 0 only); None follows eval.progress.

    Before attacking, the model sanity checks run on the first SANITY_POINTS points, and after it the
    result checks on each model's accuracies; what fires is stored under "sanity" in the JSON and
    emitted as RobustnessSanityWarning. Under torchrun the ranks share the points
    (`evaluate_across_ranks`) and rank 0 writes the JSON and warns.
    """
    if split not in EVAL_SPLITS:
        raise ConfigError(f"eval split {split!r}: expected one of {EVAL_SPLITS}")
    path = resolve_checkpoint(run_or_file, which)
    # The results are written at the end: a path that cannot take them is refused before the work.
    out = out or default_eval_path(path, split)
    check_output_file(out, "evaluation output")
    session, state = session_from_checkpoint(str(path), device)
    cfg = session.cfg
    init_distributed(cfg.train.process_group, session.device)  # a no-op outside torchrun or when training joined
    if eval_cfg is not None:
        cfg = validate(dataclasses.replace(cfg, eval=eval_cfg))
    ecfg = cfg.eval
    models = session.method.eval_models()
    unknown = [m for m in ecfg.models if m not in models]
    if unknown:
        raise ConfigError(f"config field 'eval.models' = {list(ecfg.models)}: method '{session.method.name}' "
                          f"has models {list(models)}")
    if ecfg.models:
        models = {k: v for k, v in models.items() if k in ecfg.models}
    dataset = session.splits.test if split == "test" else session.splits.train
    x, y = dataset_tensors(dataset, ecfg.num_points, session.device)
    head = {"checkpoint": str(path), "trained_until": state["position"], "method": session.method.name,
            "dataset": cfg.data.dataset, "split": split}
    return _attack_and_report(head, models, x, y, ecfg, cfg.attack, cfg.data.eval_batch_size, device=session.device,
                              out=out, progress=progress)


def evaluate_export(export_dir: str | Path, *, eval_cfg: EvalConfig | None = None, dataset: str | None = None,
                    data_dir: str | None = None, device: str | None = None, out: Path | None = None,
                    progress: bool | None = None) -> dict:
    """`evaluate_checkpoint` for an export folder (`export_checkpoint`): its model on the first eval.num_points
    test points of the dataset its config.json names (or `dataset`), read from `data_dir` (or the dataset's
    default folder). Same JSON as for a checkpoint, with "export" naming the folder; written to
    EXPORT/eval_model.json unless `out` says otherwise. eps and norm: the export's threat model unless eval.eps
    overrides eps. `device`: None picks the GPU when there is one.
    """
    folder = Path(export_dir)
    if not folder.is_dir():
        raise CheckpointError(f"export folder {folder}: not found (expected the folder "
                              "`python -m generalist_trainer export` "
                              "wrote: model.safetensors and config.json)")
    model = load_export(folder)  # names a missing or broken file
    meta = json.loads((folder / "config.json").read_text())
    out = out or default_eval_path(folder / "model.safetensors")
    check_output_file(out, "evaluation output")
    threat = meta.get("threat_model") or {}
    attack_cfg = AttackConfig(norm=threat.get("norm", "linf"), eps=float(threat.get("eps", AttackConfig.eps)))
    data_cfg = _export_data_config(meta, dataset, data_dir)
    ecfg = validate(RunConfig(data=data_cfg, attack=attack_cfg, eval=eval_cfg or EvalConfig())).eval
    name = meta.get("exported_network", "model")
    if ecfg.models and list(ecfg.models) != [name]:
        raise ConfigError(f"config field 'eval.models' = {list(ecfg.models)}: export {folder} holds only the model "
                          f"{name!r}")
    target = resolve_device(device or "auto")
    init_distributed("auto", target)  # a no-op outside torchrun
    test = load_dataset(data_cfg, "test")
    _check_export_fits(meta, test, folder)
    x, y = dataset_tensors(test, ecfg.num_points, target)
    head = {"checkpoint": meta.get("checkpoint"), "export": str(folder), "trained_until": meta.get("trained_until"),
            "method": meta.get("method", "export"), "dataset": data_cfg.dataset, "split": "test"}
    return _attack_and_report(head, {name: model.to(target)}, x, y, ecfg, attack_cfg, data_cfg.eval_batch_size,
                              device=target, out=out, progress=progress)


def _export_data_config(meta: dict, dataset: str | None, data_dir: str | None) -> DataConfig:
    name = dataset or meta.get("dataset")
    if not name:
        raise ConfigError("export: its config.json names no dataset; pass --dataset NAME (and --data-dir PATH)")
    rebuild = dataset_spec(name).config_for_model
    if rebuild is not None:  # a test set that is a function of the shape and class count the export records
        return rebuild(int(meta["in_channels"]), int(meta["image_size"]), int(meta["num_classes"]))
    return DataConfig(dataset=name, data_dir=data_dir)


def _check_export_fits(meta: dict, test: ArrayDataset, folder: Path) -> None:
    expected = (int(meta["in_channels"]), int(meta["image_size"]), int(meta["num_classes"]))
    found = (test.channels, test.image_size, test.num_classes)
    if found != expected:
        raise ConfigError(f"dataset {test.name}: test images of {found[0]} channel(s), {found[1]}x{found[1]} pixels "
                          f"and {found[2]} classes; the model in export {folder} expects {expected[0]} channel(s), "
                          f"{expected[1]}x{expected[1]} pixels and {expected[2]} classes (pass --data-dir, or "
                          "--dataset)")


def _attack_and_report(head: dict, models: dict[str, torch.nn.Module], x: torch.Tensor, y: torch.Tensor,
                       ecfg: EvalConfig, attack_cfg: AttackConfig, batch_size: int, *, device: torch.device,
                       out: Path, progress: bool | None) -> dict:
    """Sanity checks, the attacks (shared by the ranks under torchrun) and the JSON report `head` begins."""
    # Every rank checks the same points (no collective), so all hold the same findings.
    sanity: dict[str, list[SanityFinding]] = {
        name: model_checks(model, x[:SANITY_POINTS], y[:SANITY_POINTS]) for name, model in models.items()}
    # AutoAttack progress lives beside the results (eval_x.autoattack-<model>.json) so a stop resumes.
    states = autoattack_state_files(out.with_suffix(""), models) if ecfg.autoattack_resume else None
    reporter = EvalProgress(ecfg.progress if progress is None else progress)
    start = time.perf_counter()
    if is_distributed():
        results = evaluate_across_ranks(models, x, y, ecfg, attack_cfg, batch_size, autoattack_states=states,
                                        progress=reporter)
    else:
        results = evaluate_models(models, x, y, ecfg, attack_cfg, batch_size, autoattack_states=states,
                                  progress=reporter)
    for name, res in results.items():
        sanity[name] += result_checks(res)
    report = {
        **head,
        "num_points": len(x),
        "eps": attack_cfg.eps if ecfg.eps is None else ecfg.eps,
        "norm": attack_cfg.norm,
        "eval_config": to_dict(ecfg),
        "models": results,
        "sanity": {name: [f.to_dict() for f in findings] for name, findings in sanity.items()},
        "seconds": round(time.perf_counter() - start, 1),
        "device": str(device),
        "processes": world_size(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if is_rank0():
        atomic_write(out, lambda f: f.write(json.dumps(report, indent=2).encode()))
        # A model with an earlier one's weights has that model's findings: warn once.
        warn_findings([f for name, findings in sanity.items() for f in findings
                       if SAME_WEIGHTS not in results[name]])
    report["written_to"] = str(out)
    return report


def results_table(report: dict) -> str:
    """The console table: accuracies in % with one decimal, one row per model; a model with an earlier one's
    weights says so in a last column."""
    rows = []
    for name, res in report["models"].items():
        row = {"model": name}
        row.update({k: format_percent(v) for k, v in res.items() if not k.startswith("seconds_") and k != SAME_WEIGHTS})
        rows.append(row)
    if any(SAME_WEIGHTS in res for res in report["models"].values()):
        for row, res in zip(rows, report["models"].values()):
            row["note"] = f"same weights as {res[SAME_WEIGHTS]}" if SAME_WEIGHTS in res else ""
    header = (f"{report['method']} on {report['dataset']} {report.get('split', 'test')}, {report['num_points']} "
              f"points, {report['norm']} eps {report['eps']:.4g} (accuracy %)")
    return header + "\n" + table(rows)
