"""Single-process CPU training is pinned bit for bit, so that a refactor of the step cannot move it unseen.

The digests below hash, for every method (fp32, dropout and random starts on), the parameters, buffers and optimiser
state after three steps, the three steps' logged metrics and the global RNG state after them; and, for a two-epoch
Generalist run through the training loop, epochs.csv (without its timings), steps.jsonl and last.pt's networks.
They were recorded before the sync-free step of issue 16 (typed device-side metrics, the packed BatchNorm counters)
and that change left every one of them as it was. A difference means single-process CPU numerics changed, and the
committed Fashion-MNIST tables would no longer reproduce: if that is intended, regenerate with
`python -m tests.core.test_cpu_numerics_pinned` and say why in the commit.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sys

import pytest
import torch

from tests.engine.helpers import tiny_batch, tiny_method

CONFIGS = {
    "natural": ("natural", []),
    "pgd_at": ("pgd_at", []),
    "pgd_at_l2": ("pgd_at", ["attack.norm=l2", "attack.eps=0.5", "attack.step=0.2"]),
    "trades": ("trades", []),
    "rst": ("rst", []),
    "generalist": ("generalist", []),
    "generalist_trades": ("generalist", ["method.generalist.robust_objective=trades"]),
    "pgd_at_ducat": ("pgd_at", ["method.ducat.enabled=true", "method.ducat.start=0.01"]),
    "trades_ducat": ("trades", ["method.ducat.enabled=true", "method.ducat.start=0.01"]),
    "generalist_ducat": ("generalist", ["method.ducat.enabled=true", "method.ducat.start=0.01"]),
}

DIGESTS = {
    "natural": {"state": "1352ac46ffcc54c5", "metrics": "6d2718f45aa1b8f3", "rng": "8c330fac6fc92fc6"},
    "pgd_at": {"state": "4174234030f99da2", "metrics": "0ec5a800169d3c48", "rng": "73005aebfec223b7"},
    "pgd_at_l2": {"state": "0192f76af840a0c0", "metrics": "07e0249dbd9ed59c", "rng": "73005aebfec223b7"},
    "trades": {"state": "71f060df0782a1b0", "metrics": "ea91213ded023911", "rng": "ea1a6c0f5911c66d"},
    "rst": {"state": "799cd843caa6836c", "metrics": "fed3e7d9ade02892", "rng": "ea1a6c0f5911c66d"},
    "generalist": {"state": "005faee9eb9f9232", "metrics": "6154a379776cd535", "rng": "6fdd494156787111"},
    "generalist_trades": {"state": "8e7b553dfda3f026", "metrics": "beb264dfe4b5e336", "rng": "6fb1e93daacd62f6"},
    "pgd_at_ducat": {"state": "6f81e894a63289a7", "metrics": "c9839f7d3353f26f", "rng": "ea1a6c0f5911c66d"},
    "trades_ducat": {"state": "99a7f969eef339dd", "metrics": "92873c4fb96dee6a", "rng": "ea1a6c0f5911c66d"},
    "generalist_ducat": {"state": "b05ce07e214ba6bb", "metrics": "df7da36eb1ea8baa", "rng": "6fb1e93daacd62f6"},
}


def _digest(named: list[tuple[str, torch.Tensor]]) -> str:
    h = hashlib.sha256()
    for key, value in named:
        h.update(key.encode())
        h.update(value.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _text_digest(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()[:16]


def method_digests(name: str) -> dict[str, str]:
    method, extra = CONFIGS[name]
    m = tiny_method("model.dropout=0.3", *extra, method=method, seed=3)
    m.start_epoch(1)
    torch.manual_seed(11)
    metrics = [m.train_step(*tiny_batch(seed=s)) for s in range(3)]
    named = [(f"{n}.{k}", v) for n, net in m.networks().items() for k, v in net.state_dict().items()]
    for opt_name, opt in m.optimizers().items():
        for i, state in opt.state_dict()["state"].items():
            named += [(f"opt.{opt_name}.{i}.{key}", v) for key, v in state.items() if isinstance(v, torch.Tensor)]
    return {"state": _digest(named), "metrics": _text_digest(json.dumps(metrics)),
            "rng": _digest([("rng", torch.get_rng_state())])}


def run_digests(run_dir) -> dict[str, str]:
    from generalist_trainer.trainer.checkpoint import load_checkpoint
    from generalist_trainer.trainer.training import train
    from tests.reliability.runs import tiny_config

    train(tiny_config(run_dir, "method.name=generalist", "train.log_every_steps=1", "train.checkpoint_every_steps=3"))
    rows = list(csv.DictReader(io.StringIO((run_dir / "epochs.csv").read_text())))
    for row in rows:
        for timing in ("epoch_seconds", "images_per_second", "validation_seconds"):
            row.pop(timing, None)
    state = load_checkpoint(run_dir / "last.pt")
    return {"epochs": _text_digest(json.dumps(rows)), "steps": _text_digest((run_dir / "steps.jsonl").read_bytes()),
            "last": _digest([(f"{n}.{k}", v) for n, sd in state["networks"].items() for k, v in sd.items()])}


RUN_DIGESTS = {"epochs": "0941e9e120152e26", "steps": "420c303a9a541718", "last": "c4fba551b0f1e2f9"}


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # float reductions then add up in one order
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", sorted(DIGESTS))
def test_three_steps_of_each_method_are_bit_for_bit_as_recorded(name, one_thread):
    assert method_digests(name) == DIGESTS[name]


def test_a_training_run_logs_and_checkpoints_bit_for_bit_as_recorded(tmp_path, one_thread):
    assert run_digests(tmp_path) == RUN_DIGESTS


if __name__ == "__main__":
    import tempfile
    from pathlib import Path

    torch.set_num_threads(1)
    json.dump({name: method_digests(name) for name in CONFIGS}, sys.stdout, indent=1)
    print()
    json.dump(run_digests(Path(tempfile.mkdtemp())), sys.stdout, indent=1)
