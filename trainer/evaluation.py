"""`eval` and `export` of a finished (or interrupted) run: load a checkpoint, attack, write JSON."""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from pathlib import Path

import torch

from trainer.checkpoint import atomic_write, export_safetensors, resolve_checkpoint
from trainer.config import EvalConfig, to_dict, validate
from trainer.errors import ConfigError
from trainer.eval import evaluate_models
from trainer.metrics import table
from trainer.session import dataset_tensors, model_metadata, session_from_checkpoint


def evaluate_checkpoint(run_or_file: str | Path, *, which: str = "best", eval_cfg: EvalConfig | None = None,
                        device: str | None = None, out: Path | None = None) -> dict:
    """Evaluate every model of a checkpoint (Generalist: global, robust, natural) on the test set."""
    path = resolve_checkpoint(run_or_file, which)
    session, state = session_from_checkpoint(str(path), device)
    cfg = session.cfg
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
    x, y = dataset_tensors(session.splits.test, ecfg.num_points, session.device)
    start = time.perf_counter()
    results = evaluate_models(models, x, y, ecfg, cfg.attack, cfg.data.eval_batch_size)
    report = {
        "checkpoint": str(path),
        "trained_until": state["position"],
        "method": session.method.name,
        "dataset": cfg.data.dataset,
        "split": "test",
        "num_points": len(x),
        "eps": cfg.attack.eps if ecfg.eps is None else ecfg.eps,
        "norm": cfg.attack.norm,
        "eval_config": to_dict(ecfg),
        "models": results,
        "seconds": round(time.perf_counter() - start, 1),
        "device": str(session.device),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    out = out or (path.parent / f"eval_{path.stem}.json")
    atomic_write(out, lambda f: f.write(json.dumps(report, indent=2).encode()))
    report["written_to"] = str(out)
    return report


def results_table(report: dict) -> str:
    rows = []
    for name, res in report["models"].items():
        row = {"model": name}
        row.update({k: 100.0 * v for k, v in res.items() if not k.startswith("seconds_")})
        rows.append(row)
    header = (f"{report['method']} on {report['dataset']} test, {report['num_points']} points, "
              f"{report['norm']} eps {report['eps']:.4g} (accuracy %)")
    return header + "\n" + table(rows)


def export_checkpoint(run_or_file: str | Path, out_dir: Path, which: str = "best") -> Path:
    """Export the shipped model (Generalist: the global learner) as safetensors + config.json."""
    path = resolve_checkpoint(run_or_file, which)
    session, state = session_from_checkpoint(str(path), "cpu")
    name, model = next(iter(session.method.eval_models().items()))
    meta = model_metadata(session.cfg, session.splits.train)
    meta.update({"method": session.method.name, "exported_network": name, "checkpoint": str(path),
                 "trained_until": state["position"]})
    return export_safetensors(model, out_dir, meta)
