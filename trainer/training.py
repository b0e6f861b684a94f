"""The training loop: epochs of method steps, validation-based selection, checkpoints, exact resume.

`_train` reads as the algorithm: set up (or resume), then per epoch the steps (`TrainingRun.train_epoch`) and the
end of the epoch (`TrainingRun.end_epoch`: validation, best-checkpoint selection, the log row, checkpoints).
What a checkpoint holds: trainer/training_state.py; which epoch best.pt holds: trainer/best_checkpoint.py;
validation: trainer/validation.py; one method step: trainer/methods/.
"""

from __future__ import annotations

import logging
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path

import torch
from tqdm import tqdm

from .best_checkpoint import BestCheckpoint
from .checkpoint import BEST, LAST, previous_version, save_checkpoint
from .config import RunConfig, save_config
from .distributed import (
    REPLICAS_FILE,
    assert_replicas_identical,
    barrier,
    init_distributed,
    is_distributed,
    rank_rows_of_batch,
    record_replicas,
    world_size,
)
from .distributed import rank as dist_rank
from .engine import Kind, StepAccumulator, apply_cudnn_tf32_policy
from .errors import ConfigError, Interrupted
from .guards import FiniteGuard
from .methods import Method
from .metrics import MetricsLogger
from .resume_config import resumed_config
from .run_lock import RunFolderLock, acquire_run_folder
from .runtime import configure_threads, resolve_device, seed_everything
from .session import Session, open_session
from .training_state import read_resume_state, restore_training_state, training_state
from .validation import selection_score, validate

__all__ = ["TrainResult", "train", "validate", "selection_score", "shipped_model", "claim_run_folder"]

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    global_step: int
    finished: bool  # False when stopped early by train.max_steps
    best_score: float | None


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


def resume(run_dir: str | Path, overrides: Sequence[str] = (), *, change_length: bool = False) -> TrainResult:
    """Continue the run in `run_dir` with the config its checkpoint was trained with: the Python form of
    `python -m generalist_trainer train --resume RUN [--change-length] [overrides]` (trainer/resume_config.py says
    which overrides a resume takes)."""
    return train(resumed_config(run_dir, overrides, change_length=change_length), resume=True)


def _train(cfg: RunConfig, resume: bool, run_dir: Path, rank0: bool, progress: _Progress) -> TrainResult:
    run = TrainingRun.start(cfg, resume, run_dir, rank0, progress)
    if run.reached_max_steps():
        log.info("nothing to do: step %d already reaches train.max_steps = %s (resume with train.max_steps=null "
                 "to run to the end)", run.method.global_step, cfg.train.max_steps)
        return run.result(finished=False)
    run.open_loader()
    for epoch in range(run.position.epoch, cfg.train.epochs + 1):
        if not run.train_epoch(epoch):
            return run.result(finished=False)  # stopped at train.max_steps
        run.end_epoch(epoch)
    run.finish()
    return run.result(finished=True)


@dataclass
class Position:
    """Where training continues: batch `batch` (0-based) of 1-based epoch `epoch`."""

    epoch: int = 1
    batch: int = 0


class TrainingRun:
    """One run folder being trained: its session, loader, logs, finite guard, step metrics and best checkpoint.

    Rank 0 alone writes the folder; every rank runs every step and every check (they hold the same state).
    """

    def __init__(self, cfg: RunConfig, run_dir: Path, rank0: bool, session: Session, progress: _Progress):
        self.cfg, self.run_dir, self.rank0 = cfg, run_dir, rank0
        self.session, self.method = session, session.method
        self.progress = progress
        self.logger = MetricsLogger(run_dir)
        self.guard = FiniteGuard(cfg.train.finite_check_every_steps)
        # The step metrics, on the device until a boundary reads them (trainer/engine/step_metrics.py).
        self.steps = StepAccumulator(session.device)
        self.best = BestCheckpoint()
        self.position = Position()
        self.loader = None
        self.schedule: dict[str, float] = {}  # this epoch's hyper-parameters (Method.start_epoch)
        self.epoch_started = 0.0

    # ----- set-up and resume -----------------------------------------------------------------------------------
    @classmethod
    def start(cls, cfg: RunConfig, resume: bool, run_dir: Path, rank0: bool, progress: _Progress) -> TrainingRun:
        """Seed, build the session and, with `resume`, put back the state of last.pt; nothing is trained yet."""
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
        run = cls(cfg, run_dir, rank0, open_session(cfg), progress)
        progress.method = run.method
        # cuDNN benchmark mode and the TF32 policy are process-wide: set here, from the method's resolved engine.
        apply_cudnn_tf32_policy(run.method.engine.settings)
        if rank0:
            log.info("%s", run.method.engine.settings.describe())
        if resume:
            run.resume()
        elif rank0:
            # Logs of a run killed before its first checkpoint would otherwise be continued as if they were ours.
            run.logger.reset()
        return run

    def resume(self) -> None:
        state, source = read_resume_state(self.run_dir, self.rank0)
        restore_training_state(self.session, state, str(source))
        assert_replicas_identical(self.method.networks(), f"resume from {source}")
        self.position = Position(state["position"]["epoch"], state["position"]["batch"])
        self.best = BestCheckpoint.from_state(state["best"])
        if self.rank0:
            self.logger.truncate_after(self.position.epoch - 1, self.method.global_step)
        self.guard.record_checkpoint(source, self.method.global_step)
        self.progress.checkpoint_step = self.method.global_step
        log.info("resumed %s: epoch %d, batch %d, step %d", source, self.position.epoch, self.position.batch,
                 self.method.global_step)

    def reached_max_steps(self) -> bool:
        return self.cfg.train.max_steps is not None and self.method.global_step >= self.cfg.train.max_steps

    def open_loader(self) -> None:
        """The training loader (under torchrun: this rank's slice of each global batch, networks wrapped)."""
        session, cfg = self.session, self.cfg
        if is_distributed():
            self.method.enable_data_parallel()
            assert_replicas_identical(self.method.networks(), "start of data-parallel training")
        self.loader = session.train_loader(rank=dist_rank(), world_size=world_size())
        self.method.set_epoch_length(len(self.loader))  # the loader's own count (open_session's is N // batch)
        log.info("run %s: method %s, model %s, %d train / %d val images, %d steps/epoch x %d epochs on %s -> %s",
                 cfg.name, self.method.name, cfg.model.arch, len(session.splits.train), len(session.splits.val),
                 len(self.loader), cfg.train.epochs, session.device, self.run_dir)
        if is_distributed():
            log.info("data parallel: %d processes, each trains on %d of every global batch of %d", world_size(),
                     cfg.data.batch_size // world_size(), cfg.data.batch_size)

    # ----- one epoch ---------------------------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> bool:
        """The epoch's steps from the resume position; False when train.max_steps stopped it (checkpointed)."""
        method, tcfg = self.method, self.cfg.train
        self.schedule = method.start_epoch(epoch)
        first = self.position.batch if epoch == self.position.epoch else 0
        self.steps.start_epoch()
        self.epoch_started = time.perf_counter()
        bar = tqdm(total=len(self.loader), initial=first, desc=f"epoch {epoch}/{tcfg.epochs}", leave=False,
                   disable=not (tcfg.progress and self.rank0), dynamic_ncols=True)
        # The rows' dataset indices only for an objective with per-sample state (IAT); None for every other method.
        indices = self.loader.batch_indices(epoch, start=first) if method.needs_sample_index else repeat(None)
        for batch, ((x, y), index) in enumerate(zip(self.loader.batches(epoch, start=first), indices), start=first):
            x = x.to(self.session.device, non_blocking=True)
            y = y.to(self.session.device, non_blocking=True)
            index = None if index is None else index.to(self.session.device, non_blocking=True)
            self._share_of_global_batch(batch, len(x))
            # No host read inside the step: the metrics stay on the device until a boundary reads them.
            self.steps.add(method.device_step(x, y, index), method.global_step)
            self.guard.after_step(self.steps, step=method.global_step, networks=method.networks())
            bar.update(1)
            self._check_replicas_every_few_steps()
            if tcfg.log_every_steps and method.global_step % tcfg.log_every_steps == 0:
                self._log_step(epoch, bar)
            if self.reached_max_steps():
                bar.close()
                self.checkpoint(LAST, epoch, batch + 1)
                log.info("stopped at train.max_steps = %d (epoch %d, batch %d)", tcfg.max_steps, epoch, batch + 1)
                finish_replicas(self.run_dir, method.networks(), method.global_step)
                return False
            if tcfg.checkpoint_every_steps and method.global_step % tcfg.checkpoint_every_steps == 0:
                self.checkpoint(LAST, epoch, batch + 1)
        bar.close()
        return True

    def _log_step(self, epoch: int, bar: tqdm) -> None:
        snapshot = self.read_steps(epoch)  # on every rank: under torchrun the read is a collective
        if self.rank0:
            self.logger.log_step({"step": self.method.global_step, "epoch": epoch, **self.schedule, **snapshot.last})
            bar.set_postfix({k: f"{v:.3f}" for k, v in snapshot.last.items() if snapshot.kinds[k] is Kind.LOSS})

    # ----- end of an epoch ---------------------------------------------------------------------------------------
    def end_epoch(self, epoch: int) -> None:
        """Validation, best-checkpoint selection, the epochs.csv row, best.pt (when improved) and last.pt."""
        method = self.method
        snapshot = self.read_steps(epoch)
        method.end_epoch(epoch)
        if is_distributed():
            assert_replicas_identical(method.networks(), f"end of epoch {epoch}")
        seconds = time.perf_counter() - self.epoch_started
        val = validate(self.session, epoch)
        # Means over the epoch's steps, but the fp16 loss scalers' skipped steps are counted (their sum).
        row = {"epoch": epoch, "step": method.global_step, **self.schedule,
               **{f"train_{k}": v for k, v in snapshot.epoch_means().items()}, **val,
               "epoch_seconds": round(seconds, 2),
               "images_per_second": round(snapshot.steps * self.cfg.data.batch_size / max(seconds, 1e-9), 1)}
        improved = self.best.update(val.get("val_score"), epoch, method.selectable_epoch)
        if self.rank0:
            self.logger.log_epoch(row)
        # best.pt before last.pt: killed in between, the run resumes before this epoch's validation and
        # writes both again; the other order would resume past it and never write this best.pt.
        if improved or not val:
            # Without a validation split there is nothing to select on: best is the latest.
            self.checkpoint(BEST, epoch + 1, 0)
        self.checkpoint(LAST, epoch + 1, 0)
        shown = {k: v for k, v in row.items() if k.startswith(("train_loss", "train_robust_loss",
                                                                 "train_natural_loss", "val_"))}
        log.info("epoch %d/%d  %s  %.0f img/s%s", epoch, self.cfg.train.epochs,
                 "  ".join(f"{k} {v:.4f}" for k, v in shown.items()), row["images_per_second"],
                 "  *best" if improved else "")

    def finish(self) -> None:
        if self.rank0:
            (self.run_dir / "DONE").write_text(f"{self.method.global_step}\n")  # for tools that look at the folder
        finish_replicas(self.run_dir, self.method.networks(), self.method.global_step)

    def result(self, finished: bool) -> TrainResult:
        return TrainResult(self.run_dir, self.method.global_step, finished, self.best.score)

    # ----- boundaries: host reads and checkpoints ----------------------------------------------------------------
    def read_steps(self, epoch: int):
        """A CPU-GPU sync point, the only one of the step loop: the step metrics and the guard's device-side
        records in one copy (under torchrun reduced over ranks first, so every rank sees the same and stops
        together)."""
        snapshot = self.steps.read()
        self.guard.check(snapshot, epoch=epoch, networks=self.method.networks())
        return snapshot

    def checkpoint(self, name: str, epoch: int, batch: int) -> None:
        """Write `name` continuing at (epoch, batch). Nothing non-finite may reach disk: the guard raises first
        and the previous files stay as they are. Every rank checks its (identical) state, so all stop together
        instead of rank 0 alone while the others wait in the next collective."""
        method = self.method
        done_epoch = epoch if batch else epoch - 1
        self.read_steps(done_epoch)
        self.guard.check_networks(step=method.global_step, epoch=done_epoch, networks=method.networks(),
                                  optimizers=method.optimizers())
        if self.rank0:  # rank 0 writes; every rank holds the same state (assert_replicas_identical)
            save_checkpoint(self.run_dir / name, training_state(self.session, epoch, batch, self.best))
        if name == LAST:
            self.guard.record_checkpoint(self.run_dir / name, method.global_step)
            self.progress.checkpoint_step = method.global_step

    # ----- data parallel (no-ops in one process) -----------------------------------------------------------------
    def _share_of_global_batch(self, batch: int, rows: int) -> None:
        """Under torchrun: this rank's rows of the global batch, whose attacks' random starts follow each row's
        global index (so the noise does not depend on the number of processes)."""
        if is_distributed() and rows:
            self.method.set_sample_window(*rank_rows_of_batch(batch, self.cfg.data.batch_size,
                                                              len(self.session.splits.train)))

    def _check_replicas_every_few_steps(self) -> None:
        every = self.cfg.train.dist_check_every_steps
        if is_distributed() and every and self.method.global_step % every == 0:
            assert_replicas_identical(dict([shipped_model(self.method)]), f"step {self.method.global_step}")


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
    """What a Ctrl-C reports, kept up to date by the run."""

    method: Method | None = None
    checkpoint_step: int | None = None

    def interruption(self, run_dir: Path) -> Interrupted:
        where = "before the first step" if self.method is None else f"at step {self.method.global_step}"
        if (run_dir / LAST).exists() or previous_version(run_dir / LAST).exists():
            since = "" if self.checkpoint_step is None else f", step {self.checkpoint_step}"
            return Interrupted(f"interrupted {where}; resume with: python -m generalist_trainer train --resume "
                               f"{shlex.quote(str(run_dir))} (it continues from the last checkpoint{since})")
        config = run_dir / "config.yaml"
        again = (f"python -m generalist_trainer train --config {shlex.quote(str(config))}" if config.is_file()
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
