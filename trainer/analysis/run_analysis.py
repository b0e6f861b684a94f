"""The analysis commands on a run's checkpoint or on a dataset: each computes, writes one JSON file and
returns what it wrote. `python -m generalist_trainer sweep | lipschitz | separation` are thin wrappers of these.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import atomic_write, resolve_checkpoint
from ..config import DataConfig
from ..data import load_dataset
from ..errors import ConfigError
from ..runtime import resolve_device
from ..session import Session, dataset_tensors, session_from_checkpoint
from .eps_sweep import DEFAULT_EPS_MULTIPLES, accuracy_vs_eps
from .lipschitz import LipschitzConfig, default_eps, estimate_models
from .sanity import curve_checks, model_checks, warn_findings
from .separation import separation

SPLIT_NAMES = ("train", "test")


def _write_json(path: Path, payload: dict) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(payload, indent=2).encode()))


def _environment(device: torch.device) -> dict:
    return {"device": str(device), "torch": torch.__version__, "python": platform.python_version()}


def _select_models(session: Session, names: Sequence[str] | None) -> dict[str, nn.Module]:
    models = session.method.eval_models()
    if not names:
        return models
    unknown = [n for n in names if n not in models]
    if unknown:
        raise ConfigError(f"model(s) {unknown}: method '{session.method.name}' has models {list(models)}")
    return {n: models[n] for n in names}


def sweep_checkpoint(run_or_file: str | Path, *, which: str = "best", eps_values: Sequence[float] | None = None,
                     num_points: int = 1000, steps: int = 20, step_ratio: float = 2.5, seed: int = 0,
                     models: Sequence[str] | None = None, device: str | None = None, out: Path | None = None,
                     emit_warnings: bool = True) -> dict:
    """PGD accuracy against eps on the first `num_points` test points, with the sanity checks that need it.

    Default radii: 0, 1/4, 1/2, 1, 3/2 and 2 times the run's training eps. Written to
    RUN/sweep_<checkpoint>.json unless `out` is given.
    """
    if num_points < 1:
        raise ConfigError(f"sweep num_points = {num_points!r}: expected an integer >= 1")
    path = resolve_checkpoint(run_or_file, which)
    session, state = session_from_checkpoint(str(path), device)
    cfg = session.cfg
    if eps_values is None:
        eps_values = [m * cfg.attack.eps for m in DEFAULT_EPS_MULTIPLES]
    x, y = dataset_tensors(session.splits.test, num_points, session.device)
    start = time.perf_counter()
    results, all_findings = {}, []
    for name, model in _select_models(session, models).items():
        sweep = accuracy_vs_eps(model, x, y, eps_values, norm=cfg.attack.norm, steps=steps, step_ratio=step_ratio,
                                batch_size=cfg.data.eval_batch_size, seed=seed)
        curve = [(p["eps"], p["accuracy"]) for p in sweep["curve"]]
        findings = model_checks(model, x, y) + curve_checks(
            sweep["clean"], curve, norm=cfg.attack.norm, largest_class_share=sweep["largest_class_share"])
        sweep["sanity"] = [f.to_dict() for f in findings]
        results[name] = sweep
        all_findings += findings
    report = {
        "kind": "eps_sweep",
        "checkpoint": str(path),
        "trained_until": state["position"],
        "method": session.method.name,
        "dataset": cfg.data.dataset,
        "split": "test",
        "num_points": len(x),
        "train_eps": cfg.attack.eps,
        "norm": cfg.attack.norm,
        "steps": steps,
        "seed": seed,
        "models": results,
        "seconds": round(time.perf_counter() - start, 1),
        **_environment(session.device),
    }
    out = out or path.parent / f"sweep_{path.stem}.json"
    _write_json(out, report)
    if emit_warnings:
        warn_findings(all_findings)
    return {**report, "written_to": str(out)}


def lipschitz_checkpoint(run_or_file: str | Path, *, which: str = "best", splits: Sequence[str] = SPLIT_NAMES,
                         num_points: int = 1000, variant: str = "ascent", eps: float | None = None,
                         step: float = 0.003, steps: int = 10, init_std: float = 0.001, batch_size: int = 16,
                         seed: int = 0, models: Sequence[str] | None = None, device: str | None = None,
                         out: Path | None = None, progress: Callable[[str], None] | None = None) -> dict:
    """Empirical local Lipschitz constant of every model of a checkpoint on the first `num_points` points of
    each split (the training points are the run's own, without augmentation). eps None: the spec's radius
    for the dataset (0.1 MNIST-like, 0.031 CIFAR/SVHN), else the run's training eps. Written to
    RUN/lipschitz_<checkpoint>.json unless `out` is given.
    """
    unknown = [s for s in splits if s not in SPLIT_NAMES]
    if unknown or not splits:
        raise ConfigError(f"local Lipschitz splits {list(splits)}: expected a non-empty selection of {SPLIT_NAMES}")
    if num_points < 1:
        raise ConfigError(f"local Lipschitz num_points = {num_points!r}: expected an integer >= 1")
    path = resolve_checkpoint(run_or_file, which)
    session, state = session_from_checkpoint(str(path), device)
    cfg = session.cfg
    eps_source = "argument"
    if eps is None:
        eps = default_eps(cfg.data.dataset)
        eps_source = "spec/lipschitz.md for the dataset"
        if eps is None:
            eps, eps_source = cfg.attack.eps, "the run's attack.eps (the spec names no radius for this dataset)"
    lip_cfg = LipschitzConfig(eps=eps, step=step, steps=steps, init_std=init_std, batch_size=batch_size,
                              variant=variant, seed=seed)
    datasets = {"train": session.splits.train, "test": session.splits.test}
    inputs = {s: dataset_tensors(datasets[s], num_points, session.device)[0] for s in splits}
    start = time.perf_counter()
    results = estimate_models(_select_models(session, models), inputs, lip_cfg, progress)
    report = {
        "kind": "local_lipschitz",
        "checkpoint": str(path),
        "trained_until": state["position"],
        "method": session.method.name,
        "dataset": cfg.data.dataset,
        "eps": eps,
        "eps_source": eps_source,
        "variant": variant,
        "config": {"step": step, "steps": steps, "init_std": init_std, "batch_size": batch_size, "seed": seed},
        "models": results,
        "seconds": round(time.perf_counter() - start, 1),
        **_environment(session.device),
    }
    out = out or path.parent / f"lipschitz_{path.stem}.json"
    _write_json(out, report)
    return {**report, "written_to": str(out)}


def dataset_separation(dataset: str = "fashion-mnist", *, data_dir: str | None = None,
                       eps_values: Sequence[float] | None = None, device: str = "auto",
                       budget_bytes: int | None = None, train_points: int | None = None,
                       test_points: int | None = None, out: Path | None = None) -> dict:
    """Train-train and test-train Linf separation of a whole dataset (the full training set, no
    validation split); eps None: the spec's radius for the dataset. Written to
    separation_<dataset>.json in the current folder unless `out` is given. `train_points` /
    `test_points` keep only a prefix (for a quick look; the published numbers use every point).
    """
    from ..registry import DATASETS, load_registrations

    load_registrations()
    if dataset not in DATASETS:
        raise ConfigError(f"separation dataset {dataset!r}: expected one of {DATASETS.names()}")
    for name, n in (("train_points", train_points), ("test_points", test_points)):
        if n is not None and n < 1:
            raise ConfigError(f"separation {name} = {n!r}: expected null or an integer >= 1")
    if eps_values is None:
        default = default_eps(dataset)
        eps_values = [default] if default is not None else []
    data_cfg = DataConfig(dataset=dataset, data_dir=data_dir)
    train, test = load_dataset(data_cfg, "train"), load_dataset(data_cfg, "test")
    train_x, train_y = train.images[:train_points], train.labels[:train_points]
    test_x, test_y = test.images[:test_points], test.labels[:test_points]
    dev = resolve_device(device)
    start = time.perf_counter()
    stats = separation(train_x, train_y, test_x, test_y, device=dev, budget_bytes=budget_bytes)
    report = {
        "kind": "separation",
        "dataset": dataset,
        "data_dir": data_dir,
        "distance": "Linf over flattened pixels in [0, 1]",
        "num_train": len(train_x),
        "num_test": len(test_x),
        "eps": list(eps_values),
        **{name: s.to_dict(list(eps_values)) for name, s in stats.items()},
        "seconds": round(time.perf_counter() - start, 1),
        **_environment(dev),
    }
    out = out or Path(f"separation_{dataset}.json")
    _write_json(out, report)
    return {**report, "written_to": str(out)}
