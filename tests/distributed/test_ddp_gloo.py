"""Data-parallel training under torchrun: 2 CPU processes with gloo against one process on the same global batch.

Each test launches `torchrun --standalone --nproc_per_node=2` as a subprocess (OMP_NUM_THREADS=1).
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import generalist_trainer.trainer.session as session_module
from generalist_trainer.trainer.checkpoint import LAST, load_checkpoint
from generalist_trainer.trainer.config import load_config
from generalist_trainer.trainer.distributed import REPLICAS_FILE, state_digest
from generalist_trainer.trainer.session import open_session
from generalist_trainer.trainer.training import train

from .worker import batchnorm_free

REPO = Path(__file__).resolve().parents[2]

# 192 training images in global batches of 32: 6 steps per epoch, each rank trains on 16 rows of each.
# The loader's randomness (crops, flips, order) is a function of the position in the epoch, so both runs see
# exactly the same global batches; the attacks' random starts are drawn per row of the global batch, so each
# rank draws its rows' starts and together they are the one process's. No dropout: its masks are per rank.
TINY = [
    "data.dataset=synthetic", "data.synthetic_shape=[1, 12, 12]", "data.synthetic_train_size=224",
    "data.synthetic_test_size=64", "data.val_size=32", "data.batch_size=32", "data.eval_batch_size=64",
    "model.arch=small_cnn", "attack.eps=0.1", "attack.step=0.05", "attack.steps=2",
    "method.name=generalist", "method.generalist.sync_start=0.5",
    "train.epochs=2", "train.val_points=32", "train.val_pgd_steps=2", "train.progress=false",
    "train.log_every_steps=1", "train.process_group=gloo", "eval.num_points=32",
]


def torchrun(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-8000:]}"
    return done


def networks(run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    return load_checkpoint(run_dir / LAST)["networks"]


def epoch_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "epochs.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def check_replicas_file(run_dir: Path) -> dict:
    """Both ranks recorded the same digest of every network, and it is the digest of last.pt's weights."""
    record = json.loads((run_dir / REPLICAS_FILE).read_text())
    assert record["world_size"] == 2 and record["process_group"] == "gloo" and record["identical"]
    rank0, rank1 = (r["networks"] for r in record["ranks"])
    assert rank0 == rank1
    for name, state in networks(run_dir).items():
        assert rank0[name]["sha256"] == state_digest(state), f"{name}: replicas.json does not match last.pt"
    return record


def test_two_processes_match_one_process_and_resume_exactly(tmp_path, monkeypatch):
    """Generalist (PGD-AT robust expert, random starts on) on a BatchNorm-free small CNN, 12 steps with a
    redistribution epoch.

    BatchNorm is left out because in train mode it normalises each rank's slice with the slice's own
    statistics, which legitimately differs from one process normalising the whole batch.
    """
    straight, split = tmp_path / "ddp", tmp_path / "ddp_split"
    done = torchrun("-m", "tests.distributed.worker", "--no-batchnorm", "--probe-divergence",
                    "train", "--no-eval", *TINY, f"train.out_dir={straight}",
                    "--then", "train", "--no-eval", *TINY, f"train.out_dir={split}", "train.max_steps=5",
                    "--then", "train", "--resume", str(split), "--no-eval", "train.max_steps=null")
    assert done.stderr.count("divergence detected") == 2  # the replica check fires on both ranks

    # The same single-process run, in this process.
    monkeypatch.setattr(session_module, "build_model", batchnorm_free)
    cfg = load_config(None, [*TINY, f"train.out_dir={tmp_path / 'single'}"])
    result = train(cfg)
    assert result.finished and result.global_step == 12
    initial = {k: v.detach().clone() for k, v in open_session(cfg).method.global_model.state_dict().items()}

    check_replicas_file(straight)
    ddp, single = networks(straight), networks(tmp_path / "single")
    assert ddp.keys() == single.keys() == {"robust", "natural", "avg_robust", "avg_natural", "global"}
    for name in ddp:
        for key, value in single[name].items():
            torch.testing.assert_close(ddp[name][key], value, rtol=1e-4, atol=1e-5, msg=f"{name}.{key}")
    # Not trivially equal: training moved the global model far more than the two runs differ.
    moved = max(float((single["global"][k] - v).abs().max()) for k, v in initial.items())
    assert moved > 1e-3

    # Logged metrics are global-batch means, written once (rank 0): same as the single process.
    rows, rows_single = epoch_rows(straight), epoch_rows(tmp_path / "single")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for r, s in zip(rows, rows_single):
        for key in ("train_robust_loss", "train_natural_loss", "train_natural_acc"):
            assert float(r[key]) == pytest.approx(float(s[key]), rel=1e-4, abs=1e-6), key
    steps = [json.loads(line)["step"] for line in (straight / "steps.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))

    # Stopped after 5 steps and resumed on both ranks: bit for bit the straight distributed run.
    check_replicas_file(split)
    resumed = networks(split)
    for name in ddp:
        for key, value in ddp[name].items():
            assert torch.equal(resumed[name][key], value), f"{name}.{key} differs after a distributed resume"


def test_cli_under_torchrun_with_batchnorm_trains_identical_replicas_and_shards_eval(tmp_path):
    """`python -m generalist_trainer train` itself under torchrun, BatchNorm included (running statistics averaged over
    ranks), TRADES as the robust objective (two DDP forwards before one backward), random starts on, the
    torch loader (DataLoader workers; the other test uses the cpu one; all loaders shard alike, tests/data), then
    the sharded test-set evaluation of best.pt."""
    run = tmp_path / "run"
    overrides = [*TINY, "data.loader=torch", "data.num_workers=0"]
    done = torchrun("-m", "generalist_trainer", "train", *overrides, f"train.out_dir={run}",
                    "method.generalist.robust_objective=trades", "eval.attacks=[clean, pgd]")
    record = check_replicas_file(run)
    assert record["step"] == 12
    # The BatchNorm running statistics are trained, averaged and mixed into G like the weights.
    g = networks(run)["global"]
    assert any("running_var" in k for k in g) and all(torch.isfinite(v).all() for v in g.values())
    report = json.loads((run / "eval_best.json").read_text())
    assert report["processes"] == 2 and report["num_points"] == 32
    for res in report["models"].values():
        assert 0.0 <= res["pgd20"] <= res["clean"] <= 1.0
        # Accuracies over 32 points assembled from two shares of 16: multiples of 1/32.
        assert (res["clean"] * 32) == pytest.approx(round(res["clean"] * 32))
    assert "data parallel: 2 processes, each trains on 16 of every global batch of 32" in done.stdout
    # Rank 0 alone prints and logs.
    assert done.stdout.count("epoch 1/2 ") == 1 and done.stdout.count("results:") == 1
    assert [r["epoch"] for r in epoch_rows(run)] == ["1", "2"]
