"""Tiny deterministic training runs for the reliability tests, in-process or as `python -m generalist_trainer`
subprocesses."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from generalist_trainer.trainer.checkpoint import CRASH_ENV_VAR, load_checkpoint
from generalist_trainer.trainer.config import RunConfig, load_config

REPO_ROOT = Path(__file__).resolve().parents[2]

# 128 training images / 32 = 4 steps per epoch, 2 epochs. Generalist with redistribution in epoch 2 and
# dropout: every kind of state (5 networks, 2 optimisers, method state, the torch RNG) must survive a
# resume. One thread: float reductions then add up in one order in every process.
TINY = [
    "data.dataset=synthetic", "data.synthetic_shape=[1, 12, 12]", "data.synthetic_train_size=160",
    "data.synthetic_test_size=32", "data.val_size=32", "data.batch_size=32", "data.eval_batch_size=32",
    "model.arch=small_cnn", "model.dropout=0.3", "attack.eps=0.1", "attack.step=0.05", "attack.steps=2",
    "method.name=generalist", "method.generalist.sync_start=0.5",
    "train.epochs=2", "train.val_points=32", "train.val_pgd_steps=1", "train.progress=false",
    "train.log_every_steps=1", "train.deterministic=true", "train.threads=1", "eval.num_points=32",
]
STEPS = 8


def tiny_config(run_dir: Path, *extra: str) -> RunConfig:
    return load_config(None, [*TINY, f"train.out_dir={run_dir}", *extra])


def train_command(run_dir: Path, resume: bool, *extra: str) -> list[str]:
    if resume:
        return [sys.executable, "-m", "generalist_trainer", "train", "--resume", str(run_dir), "--no-eval", *extra]
    return [sys.executable, "-m", "generalist_trainer", "train", "--no-eval", *TINY, f"train.out_dir={run_dir}",
            "train.checkpoint_every_steps=1", *extra]


def subprocess_env(crash_at: str | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop(CRASH_ENV_VAR, None)
    if crash_at is not None:
        env[CRASH_ENV_VAR] = crash_at
    return env


def run_train(run_dir: Path, resume: bool = False, crash_at: str | None = None,
              timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(train_command(run_dir, resume), cwd=REPO_ROOT, env=subprocess_env(crash_at),
                          capture_output=True, text=True, timeout=timeout)


def comparable_state(path: Path) -> dict[str, Any]:
    """Everything of a checkpoint except its config (which names the run folder), flattened."""
    state = load_checkpoint(path)
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}", v)
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(f"{prefix}[{i}]", v)
        else:
            flat[prefix] = value

    walk("", {k: v for k, v in state.items() if k != "config"})
    return flat


def assert_same_state(a: Path, b: Path) -> None:
    """Bit-for-bit: every tensor equal (torch.equal), every other value equal."""
    sa, sb = comparable_state(a), comparable_state(b)
    assert sa.keys() == sb.keys()
    differing = [k for k in sa if not (torch.equal(sa[k], sb[k]) if isinstance(sa[k], torch.Tensor)
                                       else sa[k] == sb[k])]
    assert not differing, f"{a} and {b} differ in {differing[:10]}"


def assert_logged_once(run_dir: Path) -> None:
    """steps.jsonl has every step 1..STEPS once, epochs.csv every epoch once, whatever the kills interrupted."""
    steps = [json.loads(line)["step"] for line in (run_dir / "steps.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1)), f"steps.jsonl holds steps {steps}"
    with (run_dir / "epochs.csv").open(newline="") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2"]
