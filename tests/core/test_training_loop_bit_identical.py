"""The loop split of issue 14 (item 5: set-up/resume, one epoch, end of epoch, BestCheckpoint, validation through
the evaluation code) must leave whole training runs bit-identical, validation and best-checkpoint choice included.

Each case trains a tiny synthetic run with `train()` (3 epochs, validation after each, a mid-run checkpoint and a
DUCAT late start where it applies) and hashes: the epochs.csv rows and steps.jsonl rows without their wall-clock
columns, and for best.pt and last.pt every network tensor, the position and the best record, on one CPU thread.
The digests were recorded from commit ac6a441 (before the split) by
`python -m tests.core.test_training_loop_bit_identical`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
from pathlib import Path

import pytest

from generalist_trainer.trainer.checkpoint import BEST, LAST, load_checkpoint
from generalist_trainer.trainer.config import load_config
from generalist_trainer.trainer.training import train

DIGESTS = Path(__file__).with_name("training_loop_digests.json")
TINY = [
    "data.dataset=synthetic", "data.synthetic_shape=[1, 12, 12]", "data.synthetic_train_size=224",
    "data.synthetic_test_size=64", "data.val_size=48", "data.batch_size=32", "data.eval_batch_size=20",
    "model.arch=small_cnn", "model.dropout=0.3", "attack.eps=0.1", "attack.step=0.05", "attack.steps=2",
    "train.epochs=3", "train.val_points=48", "train.val_pgd_steps=3", "train.progress=false",
    "train.log_every_steps=2", "train.checkpoint_every_steps=4", "eval.num_points=32",
    "engine.channels_last=false", "train.threads=1",  # one thread: CPU float reductions depend on the count
]
CASES = {
    "pgd_at_select_pgd": ["method.name=pgd_at", "train.select_metric=pgd"],
    "trades_ducat_late": ["method.name=trades", "method.ducat.enabled=true", "method.ducat.start=0.6"],
    "generalist_every_step": ["method.name=generalist", "method.generalist.sync_start=0.3"],
    "natural_no_validation": ["method.name=natural", "train.val_points=0"],
}
WALL_CLOCK = ("seconds", "images_per_second")


def _rows_digest(rows: list[dict]) -> str:
    kept = [{k: v for k, v in row.items() if not any(w in k for w in WALL_CLOCK)} for row in rows]
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


def _checkpoint_digest(path: Path) -> str:
    state = load_checkpoint(path)
    digest = hashlib.sha256(json.dumps([state["position"], state["best"]], sort_keys=True).encode())
    for net in sorted(state["networks"]):
        for name, tensor in sorted(state["networks"][net].items()):
            digest.update(f"{net}.{name}".encode())
            digest.update(tensor.contiguous().reshape(-1).view(-1).numpy().tobytes())
    return digest.hexdigest()


def run_digests(out_dir: Path, overrides: list[str]) -> dict[str, str]:
    train(load_config(None, [*TINY, *overrides, f"train.out_dir={out_dir}"]))
    with open(out_dir / "epochs.csv", newline="") as f:
        epochs = list(csv.DictReader(f))
    steps = [json.loads(line) for line in (out_dir / "steps.jsonl").read_text().splitlines()]
    return {"epochs": _rows_digest(epochs), "steps": _rows_digest(steps),
            "best": _checkpoint_digest(out_dir / BEST), "last": _checkpoint_digest(out_dir / LAST)}


@pytest.mark.parametrize("case", sorted(CASES))
def test_training_run_matches_the_digests_recorded_before_the_loop_split(tmp_path, case):
    expected = json.loads(DIGESTS.read_text())[case]
    assert run_digests(tmp_path / case, CASES[case]) == expected


if __name__ == "__main__":  # record the digests (run from the commit to compare against)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        recorded = {case: run_digests(Path(tmp) / case, overrides) for case, overrides in CASES.items()}
    DIGESTS.write_text(json.dumps(recorded, indent=2, sort_keys=True) + "\n")
    sys.stdout.write(f"wrote {DIGESTS}\n")
