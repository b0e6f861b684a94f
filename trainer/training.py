"""The training loop: epochs of method steps, validation-based selection, checkpoints, exact resume."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from trainer.attacks import PGD
from trainer.checkpoint import BEST, LAST, load_checkpoint, save_checkpoint
from trainer.config import RunConfig, save_config, to_dict
from trainer.data import CpuLoader, augmentation_defaults
from trainer.errors import CheckpointError, ConfigError
from trainer.eval import correct_mask
from trainer.metrics import MetricsLogger
from trainer.runtime import capture_rng_state, configure_threads, restore_rng_state, seed_everything
from trainer.session import Session, dataset_tensors, load_networks, open_session


@dataclass
class TrainResult:
    run_dir: Path
    global_step: int
    finished: bool  # False when stopped early by train.max_steps
    best_score: float | None


def check_writable(run_dir: Path) -> None:
    """Fail before training, not after hours of it, when the output folder cannot be written."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write_probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"config field 'train.out_dir' = {str(run_dir)!r}: cannot write there ({exc})") from None


def selection_score(clean: float, pgd: float, metric: str) -> float:
    return {"clean": clean, "pgd": pgd, "sum": clean + pgd}[metric]


def validate(session: Session, epoch: int) -> dict[str, float]:
    """Clean and PGD-k accuracy of the selection model on the validation split (never the test set)."""
    cfg = session.cfg
    if len(session.splits.val) == 0 or cfg.train.val_points == 0:
        return {}
    model = next(iter(session.method.eval_models().values()))
    x, y = dataset_tensors(session.splits.val, cfg.train.val_points, session.device)
    # A generator of its own: validation must not shift the training RNG stream (exact resume).
    gen = torch.Generator(device=session.device).manual_seed(cfg.train.seed * 1000 + epoch)
    steps = cfg.train.val_pgd_steps
    eps = cfg.attack.eps
    attack = PGD(eps, 2.5 * eps / steps, steps, norm=cfg.attack.norm, generator=gen)
    bs = cfg.data.eval_batch_size
    clean = float(correct_mask(model, x, y, bs).float().mean())
    robust = []
    for i in range(0, len(x), bs):
        xb, yb = x[i:i + bs], y[i:i + bs]
        robust.append(correct_mask(model, attack(model, xb, yb), yb, bs))
    pgd = float(torch.cat(robust).float().mean())
    return {"val_clean": clean, f"val_pgd{steps}": pgd,
            "val_score": selection_score(clean, pgd, cfg.train.select_metric)}


def _state(session: Session, epoch: int, batch: int, best: float | None, best_epoch: int | None) -> dict:
    method = session.method
    return {
        "config": to_dict(session.cfg),
        "method": method.name,
        "networks": {k: v.state_dict() for k, v in method.networks().items()},
        "optimizers": {k: v.state_dict() for k, v in method.optimizers().items()},
        # Where training continues: batch `batch` (0-based) of 1-based epoch `epoch`.
        "position": {"epoch": epoch, "batch": batch, "global_step": method.global_step},
        "method_state": method.extra_state(),
        "rng": capture_rng_state(),
        "best": {"score": best, "epoch": best_epoch},
    }


def _restore(session: Session, state: dict, source: str) -> None:
    method = session.method
    if state["method"] != method.name:
        raise CheckpointError(f"checkpoint {source}: written by method '{state['method']}', "
                              f"this run is '{method.name}'")
    load_networks(method, state, source)
    for name, opt in method.optimizers().items():
        opt.load_state_dict(state["optimizers"][name])
    method.load_extra_state(state["method_state"])
    restore_rng_state(state["rng"])


def train(cfg: RunConfig, resume: bool = False) -> TrainResult:
    """Train per `cfg`; with resume=True continue from `<out_dir>/last.pt` exactly where it stopped."""
    run_dir = Path(cfg.train.out_dir)
    check_writable(run_dir)
    configure_threads(cfg.train.threads)
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    save_config(cfg, run_dir / "config.yaml")
    session = open_session(cfg)
    method, tcfg = session.method, cfg.train
    logger = MetricsLogger(run_dir)

    epoch, start_batch, best, best_epoch = 1, 0, None, None
    if resume:
        state = load_checkpoint(run_dir / LAST)
        _restore(session, state, str(run_dir / LAST))
        epoch, start_batch = state["position"]["epoch"], state["position"]["batch"]
        best, best_epoch = state["best"]["score"], state["best"]["epoch"]
        logger.truncate_after(epoch - 1, method.global_step)
        print(f"resumed {run_dir / LAST}: epoch {epoch}, batch {start_batch}, step {method.global_step}")
    elif (run_dir / LAST).exists():
        raise ConfigError(f"config field 'train.out_dir' = {str(run_dir)!r}: already holds a run "
                          f"({LAST}); pass --resume to continue it or choose another folder")

    if tcfg.max_steps is not None and method.global_step >= tcfg.max_steps:
        print(f"nothing to do: step {method.global_step} already reaches train.max_steps = {tcfg.max_steps} "
              f"(resume with train.max_steps=null to run to the end)")
        return TrainResult(run_dir, method.global_step, False, best)

    pad_default, flip_default = augmentation_defaults(cfg.data.dataset, session.splits.train.image_size)
    padding = pad_default if cfg.data.crop_padding is None else cfg.data.crop_padding
    flip = flip_default if cfg.data.flip is None else cfg.data.flip
    loader = CpuLoader(session.splits.train, cfg.data.batch_size, shuffle=True, padding=padding, flip=flip,
                       seed=tcfg.seed, drop_last=True)
    if len(loader) == 0:
        raise ConfigError(f"config field 'data.batch_size' = {cfg.data.batch_size}: larger than the "
                          f"{len(session.splits.train)} training images (drop_last leaves no batch)")
    print(f"run {cfg.name}: method {method.name}, model {cfg.model.arch}, {len(session.splits.train)} train / "
          f"{len(session.splits.val)} val images, {len(loader)} steps/epoch x {tcfg.epochs} epochs on "
          f"{session.device} -> {run_dir}")

    def checkpoint(path_name: str, ep: int, batch: int) -> None:
        save_checkpoint(run_dir / path_name, _state(session, ep, batch, best, best_epoch))

    for ep in range(epoch, tcfg.epochs + 1):
        sched = method.start_epoch(ep)
        first = start_batch if ep == epoch else 0
        sums: dict[str, float] = {}
        count = 0
        t0 = time.perf_counter()
        bar = tqdm(total=len(loader), initial=first, desc=f"epoch {ep}/{tcfg.epochs}", leave=False,
                   disable=not tcfg.progress, dynamic_ncols=True)
        for b, (x, y) in enumerate(loader.batches(ep, start=first), start=first):
            x = x.to(session.device, non_blocking=True)
            y = y.to(session.device, non_blocking=True)
            metrics = method.train_step(x, y)
            bad = [k for k, v in metrics.items() if k.endswith("loss") and not math.isfinite(v)]
            if bad:
                raise FloatingPointError(f"non-finite {bad[0]} = {metrics[bad[0]]} at epoch {ep}, step "
                                         f"{method.global_step}; the last good checkpoint is {run_dir / LAST}")
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
            bar.update(1)
            if tcfg.log_every_steps and method.global_step % tcfg.log_every_steps == 0:
                logger.log_step({"step": method.global_step, "epoch": ep, **sched, **metrics})
                bar.set_postfix({k: f"{v:.3f}" for k, v in metrics.items() if "loss" in k})
            if tcfg.max_steps is not None and method.global_step >= tcfg.max_steps:
                bar.close()
                checkpoint(LAST, ep, b + 1)
                print(f"stopped at train.max_steps = {tcfg.max_steps} (epoch {ep}, batch {b + 1})")
                return TrainResult(run_dir, method.global_step, False, best)
            if tcfg.checkpoint_every_steps and method.global_step % tcfg.checkpoint_every_steps == 0:
                checkpoint(LAST, ep, b + 1)
        bar.close()
        method.end_epoch(ep)
        seconds = time.perf_counter() - t0
        val = validate(session, ep)
        row = {"epoch": ep, "step": method.global_step, **sched,
               **{f"train_{k}": v / max(count, 1) for k, v in sums.items()}, **val,
               "epoch_seconds": round(seconds, 2), "images_per_second": round(count * cfg.data.batch_size /
                                                                                max(seconds, 1e-9), 1)}
        improved = bool(val) and (best is None or val["val_score"] > best)
        if improved:
            best, best_epoch = val["val_score"], ep
        logger.log_epoch(row)
        checkpoint(LAST, ep + 1, 0)
        if improved or not val:
            # Without a validation split there is nothing to select on: best is the latest.
            checkpoint(BEST, ep + 1, 0)
        shown = {k: v for k, v in row.items() if k.startswith(("train_loss", "train_robust_loss",
                                                                 "train_natural_loss", "val_"))}
        print(f"epoch {ep}/{tcfg.epochs}  " + "  ".join(f"{k} {v:.4f}" for k, v in shown.items())
              + f"  {row['images_per_second']:.0f} img/s" + ("  *best" if improved else ""))
    # Marks completion for tools that look at the folder.
    (run_dir / "DONE").write_text(f"{method.global_step}\n")
    return TrainResult(run_dir, method.global_step, True, best)
