"""The training loop: epochs of method steps, validation-based selection, checkpoints, exact resume."""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from trainer.attacks import PGD
from trainer.checkpoint import BEST, LAST, load_resume_state, previous_version, save_checkpoint
from trainer.config import RunConfig, save_config, to_dict
from trainer.data import augmentation_defaults, build_train_loader
from trainer.distributed import (
    REPLICAS_FILE,
    all_reduce_sum,
    assert_replicas_identical,
    barrier,
    init_distributed,
    is_distributed,
    record_replicas,
    shard_bounds,
    world_size,
)
from trainer.distributed import rank as dist_rank
from trainer.engine import Kind, StepAccumulator, apply_cudnn_tf32_policy
from trainer.errors import CheckpointError, ConfigError, Interrupted
from trainer.eval import correct_mask
from trainer.guards import FiniteGuard
from trainer.methods import Method
from trainer.metrics import MetricsLogger
from trainer.run_lock import RunFolderLock, acquire_run_folder
from trainer.runtime import capture_rng_state, configure_threads, resolve_device, restore_rng_state, seed_everything
from trainer.session import Session, dataset_tensors, load_networks, open_session


@dataclass
class TrainResult:
    run_dir: Path
    global_step: int
    finished: bool  # False when stopped early by train.max_steps
    best_score: float | None


def claim_run_folder(run_dir: Path) -> RunFolderLock:
    """Take the output folder's lock before anything is written there (one writer per run: trainer/run_lock.py),
    and fail before training, not after hours of it, when the folder cannot be written."""
    try:
        lock = acquire_run_folder(run_dir, "train")
    except OSError as exc:
        raise ConfigError(f"config field 'train.out_dir' = {str(run_dir)!r}: cannot write there ({exc})") from None
    try:
        probe = run_dir / ".write_probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        lock.release()
        raise ConfigError(f"config field 'train.out_dir' = {str(run_dir)!r}: cannot write there ({exc})") from None
    return lock


@dataclass
class _Progress:
    """What a Ctrl-C reports, kept up to date by `_train`."""

    method: Method | None = None
    checkpoint_step: int | None = None

    def interruption(self, run_dir: Path) -> Interrupted:
        where = "before the first step" if self.method is None else f"at step {self.method.global_step}"
        if (run_dir / LAST).exists() or previous_version(run_dir / LAST).exists():
            since = "" if self.checkpoint_step is None else f", step {self.checkpoint_step}"
            return Interrupted(f"interrupted {where}; resume with: python -m trainer train --resume "
                               f"{shlex.quote(str(run_dir))} (it continues from the last checkpoint{since})")
        config = run_dir / "config.yaml"
        again = (f"python -m trainer train --config {shlex.quote(str(config))}" if config.is_file()
                 else "the same command")
        return Interrupted(f"interrupted {where}, before the first checkpoint (nothing to resume); start again "
                           f"with: {again}")


def shipped_model(method: Method) -> tuple[str, torch.nn.Module]:
    """(name, module) of the model that is selected and shipped: the first of eval_models()."""
    return next(iter(method.eval_models().items()))


def finish_replicas(run_dir: Path, networks: dict[str, torch.nn.Module], step: int) -> None:
    """Under torchrun: record every rank's digest of every network in replicas.json (raising if they
    differ), then hold every rank until rank 0 has written the run folder, which they may read next."""
    if is_distributed():
        record_replicas(run_dir / REPLICAS_FILE, networks, step)
        barrier()


def selection_score(clean: float, pgd: float, metric: str) -> float:
    return {"clean": clean, "pgd": pgd, "sum": clean + pgd}[metric]


def validate(session: Session, epoch: int) -> dict[str, float]:
    """Clean and PGD-k accuracy of the selection model on the validation split (never the test set).

    Under torchrun each rank attacks its contiguous share of the points and the correct counts are
    summed, so every rank gets the same accuracies (and makes the same best-checkpoint decision).
    """
    cfg = session.cfg
    if len(session.splits.val) == 0 or cfg.train.val_points == 0:
        return {}
    model = next(iter(session.method.eval_models().values()))
    x, y = dataset_tensors(session.splits.val, cfg.train.val_points, session.device)
    total = len(x)
    start, stop = shard_bounds(total)
    x, y = x[start:stop], y[start:stop]
    # A generator of its own: validation must not shift the training RNG stream (exact resume).
    gen = torch.Generator(device=session.device).manual_seed(cfg.train.seed * 1000 + epoch)
    steps = cfg.train.val_pgd_steps
    eps = cfg.attack.eps
    attack = PGD(eps, 2.5 * eps / steps, steps, norm=cfg.attack.norm, generator=gen)
    bs = cfg.data.eval_batch_size
    clean_count = robust_count = 0
    t0 = time.perf_counter()
    if len(x):  # a rank's share is empty only when there are fewer points than ranks
        with session.method.engine.eval_autocast():  # engine.eval_precision: fp32 unless asked otherwise
            clean_count = int(correct_mask(model, x, y, bs).sum())
            for i in range(0, len(x), bs):
                xb, yb = x[i:i + bs], y[i:i + bs]
                robust_count += int(correct_mask(model, attack(model, xb, yb), yb, bs).sum())
    clean_count, robust_count = all_reduce_sum(torch.tensor([clean_count, robust_count], dtype=torch.int64)).tolist()
    # Taken after the all-reduce, which waits for the slowest rank: the wall time validation adds to an epoch
    # (epoch_seconds excludes it). Not "val_*": those keys are accuracies (the report plots them as such).
    seconds = time.perf_counter() - t0
    clean, pgd = clean_count / total, robust_count / total
    return {"val_clean": clean, f"val_pgd{steps}": pgd,
            "val_score": selection_score(clean, pgd, cfg.train.select_metric), "validation_seconds": round(seconds, 2)}


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
        "model_metadata": session.metadata,  # rebuilds the model without the dataset (trainer/model_loading.py)
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
    """Train per `cfg`; with resume=True continue from `<out_dir>/last.pt` exactly where it stopped.

    Under torchrun (WORLD_SIZE > 1) this is data-parallel training (trainer/distributed.py): every rank
    runs this function on its slice of each global batch, holds the same networks (checked), and rank 0
    alone writes the run folder; on resume every rank loads last.pt, so a multi-node run needs out_dir
    on a file system all nodes share.
    """
    run_dir = Path(cfg.train.out_dir)
    # First of all: under torchrun, join the process group (each process on the GPU of its LOCAL_RANK).
    rank0 = init_distributed(cfg.train.process_group, resolve_device(cfg.train.device)).rank == 0
    # Rank 0 alone writes the folder, so it alone holds the lock (released when train returns or raises).
    lock = claim_run_folder(run_dir) if rank0 else None
    progress = _Progress()
    try:
        return _train(cfg, resume, run_dir, rank0, progress)
    except KeyboardInterrupt:
        raise progress.interruption(run_dir) from None
    finally:
        if lock is not None:
            lock.release()


def _train(cfg: RunConfig, resume: bool, run_dir: Path, rank0: bool, progress: _Progress) -> TrainResult:
    if not resume and ((run_dir / LAST).exists() or previous_version(run_dir / LAST).exists()):
        # Before anything is written there (config.yaml) or built: the folder's run must stay as it is.
        raise ConfigError(f"config field 'train.out_dir' = {str(run_dir)!r}: already holds a run "
                          f"({LAST}); pass --resume to continue it or choose another folder")
    configure_threads(cfg.train.threads)
    # The same seed on every rank: the same initial weights and the same RNG streams, so that the global
    # RNG state rank 0 checkpoints is every rank's, and a resume is exact on all of them.
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    if rank0:
        save_config(cfg, run_dir / "config.yaml")
    session = open_session(cfg)
    method, tcfg = session.method, cfg.train
    progress.method = method
    # cuDNN benchmark mode and the TF32 policy are process-wide: set here, from the method's resolved engine.
    apply_cudnn_tf32_policy(method.engine.settings)
    if rank0:
        print(method.engine.settings.describe())
    logger = MetricsLogger(run_dir)

    guard = FiniteGuard(tcfg.finite_check_every_steps)
    # The step metrics, on the device until a boundary reads them (trainer/engine/step_metrics.py).
    steps = StepAccumulator(session.device)
    epoch, start_batch, best, best_epoch = 1, 0, None, None
    if resume:
        # last.pt, or last.prev.pt when last.pt fails its checksum (the rejected file is set aside).
        # Under torchrun rank 0 reads first and alone may set a rejected file aside; then the others read.
        if rank0:
            state, source = load_resume_state(run_dir, set_aside_rejected=True)
        barrier()
        if not rank0:
            state, source = load_resume_state(run_dir, set_aside_rejected=False)
        _restore(session, state, str(source))
        assert_replicas_identical(method.networks(), f"resume from {source}")
        epoch, start_batch = state["position"]["epoch"], state["position"]["batch"]
        best, best_epoch = state["best"]["score"], state["best"]["epoch"]
        if rank0:
            logger.truncate_after(epoch - 1, method.global_step)
        guard.record_checkpoint(source, method.global_step)
        progress.checkpoint_step = method.global_step
        print(f"resumed {source}: epoch {epoch}, batch {start_batch}, step {method.global_step}")
    elif rank0:
        # Logs of a run killed before its first checkpoint would otherwise be continued as if they were ours.
        logger.reset()

    if tcfg.max_steps is not None and method.global_step >= tcfg.max_steps:
        print(f"nothing to do: step {method.global_step} already reaches train.max_steps = {tcfg.max_steps} "
              f"(resume with train.max_steps=null to run to the end)")
        return TrainResult(run_dir, method.global_step, False, best)

    pad_default, flip_default = augmentation_defaults(cfg.data.dataset, session.splits.train.image_size)
    padding = pad_default if cfg.data.crop_padding is None else cfg.data.crop_padding
    flip = flip_default if cfg.data.flip is None else cfg.data.flip
    if is_distributed():
        method.enable_data_parallel()
        assert_replicas_identical(method.networks(), "start of data-parallel training")
    # data.batch_size is the global batch; under torchrun each rank loads its slice of it.
    loader = build_train_loader(cfg.data, session.splits.train, device=session.device, seed=tcfg.seed,
                                padding=padding, flip=flip, rank=dist_rank(), world_size=world_size())
    replica_check_every = tcfg.dist_check_every_steps if is_distributed() else 0
    if len(loader) == 0:
        raise ConfigError(f"config field 'data.batch_size' = {cfg.data.batch_size}: larger than the "
                          f"{len(session.splits.train)} training images (drop_last leaves no batch)")
    print(f"run {cfg.name}: method {method.name}, model {cfg.model.arch}, {len(session.splits.train)} train / "
          f"{len(session.splits.val)} val images, {len(loader)} steps/epoch x {tcfg.epochs} epochs on "
          f"{session.device} -> {run_dir}")
    if is_distributed():
        print(f"data parallel: {world_size()} processes, each trains on {cfg.data.batch_size // world_size()} of "
              f"every global batch of {cfg.data.batch_size}")

    def read_steps(ep: int):
        # A CPU-GPU sync point, the only one of the step loop: the step metrics and the guard's device-side records
        # in one copy (under torchrun reduced over ranks first, so every rank sees the same and stops together).
        snapshot = steps.read()
        guard.check(snapshot, epoch=ep, networks=method.networks())
        return snapshot

    def checkpoint(path_name: str, ep: int, batch: int) -> None:
        # Nothing non-finite may reach disk: the guard raises first and the previous files stay as they are.
        # Every rank checks its (identical) state, so all stop together instead of rank 0 alone while the
        # others wait in the next collective.
        read_steps(ep if batch else ep - 1)
        guard.check_networks(step=method.global_step, epoch=ep if batch else ep - 1, networks=method.networks(),
                             optimizers=method.optimizers())
        if rank0:  # rank 0 writes; every rank holds the same state (assert_replicas_identical)
            save_checkpoint(run_dir / path_name, _state(session, ep, batch, best, best_epoch))
        if path_name == LAST:
            guard.record_checkpoint(run_dir / path_name, method.global_step)
            progress.checkpoint_step = method.global_step

    for ep in range(epoch, tcfg.epochs + 1):
        sched = method.start_epoch(ep)
        first = start_batch if ep == epoch else 0
        steps.start_epoch()
        t0 = time.perf_counter()
        bar = tqdm(total=len(loader), initial=first, desc=f"epoch {ep}/{tcfg.epochs}", leave=False,
                   disable=not (tcfg.progress and rank0), dynamic_ncols=True)
        for b, (x, y) in enumerate(loader.batches(ep, start=first), start=first):
            x = x.to(session.device, non_blocking=True)
            y = y.to(session.device, non_blocking=True)
            if is_distributed() and len(x):
                # This rank's rows of the global batch: the attacks' random starts follow each row's global index.
                global_rows = min(cfg.data.batch_size, len(session.splits.train) - b * cfg.data.batch_size)
                method.set_sample_window(dist_rank() * (cfg.data.batch_size // world_size()), global_rows)
            # No host read inside the step: the metrics stay on the device until a boundary reads them.
            steps.add(method.device_step(x, y), method.global_step)
            guard.after_step(steps, step=method.global_step, networks=method.networks())
            bar.update(1)
            if replica_check_every and method.global_step % replica_check_every == 0:
                assert_replicas_identical(dict([shipped_model(method)]), f"step {method.global_step}")
            if tcfg.log_every_steps and method.global_step % tcfg.log_every_steps == 0:
                snapshot = read_steps(ep)  # on every rank: under torchrun the read is a collective
                if rank0:
                    logger.log_step({"step": method.global_step, "epoch": ep, **sched, **snapshot.last})
                    bar.set_postfix({k: f"{v:.3f}" for k, v in snapshot.last.items()
                                     if snapshot.kinds[k] is Kind.LOSS})
            if tcfg.max_steps is not None and method.global_step >= tcfg.max_steps:
                bar.close()
                checkpoint(LAST, ep, b + 1)
                print(f"stopped at train.max_steps = {tcfg.max_steps} (epoch {ep}, batch {b + 1})")
                finish_replicas(run_dir, method.networks(), method.global_step)
                return TrainResult(run_dir, method.global_step, False, best)
            if tcfg.checkpoint_every_steps and method.global_step % tcfg.checkpoint_every_steps == 0:
                checkpoint(LAST, ep, b + 1)
        bar.close()
        snapshot = read_steps(ep)
        method.end_epoch(ep)
        if is_distributed():
            assert_replicas_identical(method.networks(), f"end of epoch {ep}")
        seconds = time.perf_counter() - t0
        val = validate(session, ep)
        # Means over the epoch's steps, but the fp16 loss scalers' skipped steps are counted (their sum).
        row = {"epoch": ep, "step": method.global_step, **sched,
               **{f"train_{k}": v for k, v in snapshot.epoch_means().items()}, **val,
               "epoch_seconds": round(seconds, 2), "images_per_second": round(snapshot.steps * cfg.data.batch_size /
                                                                                max(seconds, 1e-9), 1)}
        selectable = method.selectable_epoch(ep)
        if selectable and best_epoch is not None and not method.selectable_epoch(best_epoch):
            best = None  # the first epoch of a late objective (DUCAT): earlier bests trained another one
        improved = bool(val) and selectable and (best is None or val["val_score"] > best)
        if improved:
            best, best_epoch = val["val_score"], ep
        if rank0:
            logger.log_epoch(row)
        # best.pt before last.pt: killed in between, the run resumes before this epoch's validation and
        # writes both again; the other order would resume past it and never write this best.pt.
        if improved or not val:
            # Without a validation split there is nothing to select on: best is the latest.
            checkpoint(BEST, ep + 1, 0)
        checkpoint(LAST, ep + 1, 0)
        shown = {k: v for k, v in row.items() if k.startswith(("train_loss", "train_robust_loss",
                                                                 "train_natural_loss", "val_"))}
        print(f"epoch {ep}/{tcfg.epochs}  " + "  ".join(f"{k} {v:.4f}" for k, v in shown.items())
              + f"  {row['images_per_second']:.0f} img/s" + ("  *best" if improved else ""))
    # Marks completion for tools that look at the folder.
    if rank0:
        (run_dir / "DONE").write_text(f"{method.global_step}\n")
    finish_replicas(run_dir, method.networks(), method.global_step)
    return TrainResult(run_dir, method.global_step, True, best)
