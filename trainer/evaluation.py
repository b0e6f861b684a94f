"""`eval` and `export` of a finished (or interrupted) run: load a checkpoint, attack, write JSON."""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from pathlib import Path

import torch

from trainer.analysis.sanity import SanityFinding, model_checks, result_checks, warn_findings
from trainer.checkpoint import (
    atomic_write,
    check_output_file,
    check_output_folder,
    export_safetensors,
    resolve_checkpoint,
)
from trainer.config import AttackConfig, EvalConfig, to_dict, validate
from trainer.distributed import (
    all_reduce_max,
    all_reduce_sum,
    init_distributed,
    is_distributed,
    is_rank0,
    shard_bounds,
    world_size,
)
from trainer.errors import ConfigError
from trainer.eval import evaluate_models
from trainer.eval.progress import EvalProgress
from trainer.eval.robustness import SAME_WEIGHTS, copy_to_duplicates, same_weights
from trainer.metrics import format_percent, table
from trainer.session import dataset_tensors, model_metadata, session_from_checkpoint

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
    init_distributed(cfg.train.dist_backend, session.device)  # a no-op outside torchrun or when training joined
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
    # Every rank checks the same points (no collective), so all hold the same findings.
    sanity: dict[str, list[SanityFinding]] = {
        name: model_checks(model, x[:SANITY_POINTS], y[:SANITY_POINTS]) for name, model in models.items()}
    # AutoAttack progress lives beside the results (eval_x.autoattack-<model>.json) so a stop resumes.
    state_prefix = out.with_suffix("") if ecfg.autoattack_resume else None
    reporter = EvalProgress(ecfg.progress if progress is None else progress)
    start = time.perf_counter()
    if is_distributed():
        results = evaluate_across_ranks(models, x, y, ecfg, cfg.attack, cfg.data.eval_batch_size,
                                        state_prefix=state_prefix, progress=reporter)
    else:
        results = evaluate_models(models, x, y, ecfg, cfg.attack, cfg.data.eval_batch_size,
                                  state_prefix=state_prefix, progress=reporter)
    for name, res in results.items():
        sanity[name] += result_checks(res)
    report = {
        "checkpoint": str(path),
        "trained_until": state["position"],
        "method": session.method.name,
        "dataset": cfg.data.dataset,
        "split": split,
        "num_points": len(x),
        "eps": cfg.attack.eps if ecfg.eps is None else ecfg.eps,
        "norm": cfg.attack.norm,
        "eval_config": to_dict(ecfg),
        "models": results,
        "sanity": {name: [f.to_dict() for f in findings] for name, findings in sanity.items()},
        "seconds": round(time.perf_counter() - start, 1),
        "device": str(session.device),
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


def evaluate_across_ranks(models: dict[str, torch.nn.Module], x: torch.Tensor, y: torch.Tensor, ecfg: EvalConfig,
                          attack_cfg: AttackConfig, batch_size: int, *, state_prefix: Path | None,
                          progress: EvalProgress | None = None) -> dict:
    """`evaluate_models` under torchrun: every rank returns the accuracies over all of x.

    Clean, PGD and CW judge each point on its own, so rank r attacks only its contiguous share
    [r n / W, (r + 1) n / W) and the correct counts are summed. AutoAttack shards itself (its units go
    round-robin to the ranks, whose flags are merged after each attack: trainer/eval/autoattack_resumable.py),
    so it is given every point. The attack noise of a share differs from the single-process run's, so the
    numbers agree with it statistically, not bit for bit. Seconds are the slowest rank's. Models with an
    earlier one's weights are found once (every rank holds the same weights, so all agree) and not attacked.
    Progress bars (rank 0's) count rank 0's share of the points.
    """
    total = len(x)
    if total < world_size():
        raise ConfigError(f"config field 'eval.num_points' = {ecfg.num_points}: {total} test point(s) cannot be "
                          f"shared by the {world_size()} processes of this torchrun launch; use at least "
                          f"{world_size()}")
    start, stop = shard_bounds(total)
    duplicates = same_weights(models)
    unique = {name: model for name, model in models.items() if name not in duplicates}
    for name, original in duplicates.items():
        if progress is not None:
            progress.note(f"{name}: same weights as {original}, evaluated once")
    results: dict[str, dict[str, float]] = {name: {} for name in unique}
    for attack in ecfg.attacks:  # one attack at a time keeps the configured order of the keys
        one = dataclasses.replace(ecfg, attacks=(attack,))
        if attack == "autoattack":
            part = evaluate_models(unique, x, y, one, attack_cfg, batch_size, state_prefix=state_prefix,
                                   progress=progress, dedupe=False)
        else:
            local = evaluate_models(unique, x[start:stop], y[start:stop], one, attack_cfg, batch_size,
                                    progress=progress, dedupe=False)
            part = _combine_shares(local, stop - start, total)
        for name in unique:
            results[name].update(part[name])
    return copy_to_duplicates(results, list(models), duplicates)


def _combine_shares(local: dict[str, dict[str, float]], count: int, total: int) -> dict[str, dict[str, float]]:
    """Accuracies over this rank's `count` points -> accuracies over all `total` points of all ranks."""
    keys = [(name, k) for name, res in local.items() for k in res]
    # A fraction of `count` points times `count` is the correct count (exact after rounding for count < 2^24).
    counts = torch.tensor([0.0 if k.startswith("seconds_") else round(local[name][k] * count) for name, k in keys],
                          dtype=torch.float64)
    seconds = torch.tensor([local[name][k] if k.startswith("seconds_") else 0.0 for name, k in keys],
                           dtype=torch.float64)
    counts, seconds = all_reduce_sum(counts).tolist(), all_reduce_max(seconds).tolist()
    combined: dict[str, dict[str, float]] = {name: {} for name in local}
    for (name, k), c, sec in zip(keys, counts, seconds):
        combined[name][k] = sec if k.startswith("seconds_") else c / total
    return combined


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


def export_checkpoint(run_or_file: str | Path, out_dir: Path, which: str = "best") -> Path:
    """Export the shipped model (Generalist: the global learner) as safetensors + config.json.

    The model is the first of `eval_models()`, exactly what was evaluated: for DUCAT the max-folded
    C-logit `FoldedLogits` (weights under `network.`), described by `class_fold` in config.json;
    `trainer.checkpoint.load_export` rebuilds either kind.
    """
    from trainer.eval.class_fold import FoldedLogits

    check_output_folder(out_dir, "export folder")
    path = resolve_checkpoint(run_or_file, which)
    session, state = session_from_checkpoint(str(path), "cpu")
    name, model = next(iter(session.method.eval_models().items()))
    meta = model_metadata(session.cfg, session.splits.train)
    meta.update({"method": session.method.name, "exported_network": name, "checkpoint": str(path),
                 "trained_until": state["position"]})
    if isinstance(model, FoldedLogits):
        num_classes = meta["num_classes"]
        meta["class_fold"] = {
            "fold": model.fold, "head_classes": 2 * num_classes, "output_classes": num_classes,
            "description": (f"DUCAT: the network ('network.*' weights) has {2 * num_classes} logits, class k "
                            f"and its dummy k + {num_classes}; the exported model outputs {num_classes} logits "
                            f"z_k = max(z_k, z_(k+{num_classes})), whose argmax is argmax-then-mod-C"),
        }
    return export_safetensors(model, out_dir, meta)
