"""The objectives-as-parts refactor (issue 14, items 2-4) must leave every existing method's training bit-identical.

Each case trains a tiny small-CNN method (NCHW, dropout on, random starts) for two epochs of two steps through the
method API the training loop uses (start_epoch, device_step, end_epoch), with DUCAT switching on in epoch 2 and
Generalist's redistribution in epoch 2, and hashes: every network tensor, every optimiser state tensor, the logged
metrics, the schedule values, the global RNG state, the eval models' logits on a fixed batch, selectable_epoch and
extra_state. The digests were recorded from commit a3aa12a (before the refactor; the working tree also held other
helpers' uncommitted API changes outside trainer/methods) by
`python -m tests.core.test_refactor_bit_identical`.

The checkpoints under tests/data/checkpoints/ were written by that same commit after epoch 1 (networks, optimisers,
method_state as trainer/training.py saves them, plus the RNG state); resuming them with the current code and training
epoch 2 must land on the same digest as the uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch

from generalist_trainer.trainer.methods import build_method
from generalist_trainer.trainer.models.small_cnn import SmallCNN
from tests.engine.helpers import tiny_batch, tiny_config

CHECKPOINTS = Path(__file__).resolve().parents[1] / "data" / "checkpoints"
BASE = ["engine.channels_last=false", "model.dropout=0.3", "train.epochs=2", "method.ducat.start=1.0",
        "method.generalist.sync_start=1.0", "method.generalist.sync_period=0.5"]
DUCAT = ["method.ducat.enabled=true"]
TRADES_ROBUST = ["method.generalist.robust_objective=trades"]
EPOCH_END = ["method.generalist.sync_mode=epoch_end"]

CASES = {
    "natural": ("natural", []),
    "pgd_at": ("pgd_at", []),
    "trades": ("trades", []),
    "rst": ("rst", []),
    "generalist_pgd_at_every_step": ("generalist", []),
    "generalist_pgd_at_epoch_end": ("generalist", EPOCH_END),
    "generalist_trades_every_step": ("generalist", TRADES_ROBUST),
    "generalist_trades_epoch_end": ("generalist", TRADES_ROBUST + EPOCH_END),
    "pgd_at_ducat": ("pgd_at", DUCAT),
    "trades_ducat": ("trades", DUCAT),
    "generalist_pgd_at_ducat": ("generalist", DUCAT),
    "generalist_trades_ducat_epoch_end": ("generalist", DUCAT + TRADES_ROBUST + EPOCH_END),
}
# Cases with a checkpoint written by the old code after epoch 1.
RESUME_CASES = ("pgd_at_ducat", "generalist_trades_ducat_epoch_end")

DIGESTS: dict[str, str] = {
    "natural": "5af8c4fdd09a36777ff942137fc2287b",
    "pgd_at": "916351eb2de1a7de12f7f88fe954f23b",
    "trades": "2e8fe8501154a71f5d2b64d867092238",
    "rst": "6b27bda2b61907d9220b0ec19e4a6713",
    "generalist_pgd_at_every_step": "b0ba4eb214a389d06e10ce20bbd5e73b",
    "generalist_pgd_at_epoch_end": "70998093d6c27a8ae69f7a73c5176408",
    "generalist_trades_every_step": "b140be4ed2c460b8f40d164d207916c4",
    "generalist_trades_epoch_end": "12a7100ff5d937932fa513615e7ff9e1",
    "pgd_at_ducat": "eb5469ea79fffcf2cfcd10c2f96ccb53",
    "trades_ducat": "480b07d048d2aad946d91e04b58c7539",
    "generalist_pgd_at_ducat": "d5c4427c5ed83e0eda07667de00a6949",
    "generalist_trades_ducat_epoch_end": "abffa4f03cca9ff7ebd4b5229a0d353d",
}


def _tensor_bytes(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes()


def method_state_digest(method) -> str:
    h = hashlib.sha256()
    for net, module in method.networks().items():
        for k, v in module.state_dict().items():
            h.update(f"{net}.{k}".encode())
            h.update(_tensor_bytes(v))
    for name, opt in method.optimizers().items():
        for i, state in opt.state_dict()["state"].items():
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    h.update(f"opt.{name}.{i}.{key}".encode())
                    h.update(_tensor_bytes(value))
    return h.hexdigest()


def build(name: str):
    """The engine tests' tiny set-up (1x12x12 inputs, 4 classes, CPU) with a 16-unit hidden layer, so that the
    committed checkpoints stay small."""
    method_name, extra = CASES[name]
    cfg = tiny_config(*BASE, *extra, method=method_name)

    def factory() -> torch.nn.Module:
        return SmallCNN(4, 1, 12, (0.5,), (0.25,), dropout=cfg.model.dropout, hidden=16)

    torch.manual_seed(3)
    return build_method(cfg, factory, torch.device("cpu"))


def run_epoch(method, epoch: int, log: list) -> None:
    log.append(("sched", epoch, method.start_epoch(epoch)))
    for s in range(2):
        log.append(("step", method.train_step(*tiny_batch(seed=10 * epoch + s))))
    method.end_epoch(epoch)


def final_digest(method, log: list) -> str:
    h = hashlib.sha256()
    h.update(method_state_digest(method).encode())
    h.update(json.dumps(log, sort_keys=True).encode())
    h.update(_tensor_bytes(torch.get_rng_state()))
    x, _ = tiny_batch(n=5, seed=99)
    for model_name, model in method.eval_models().items():
        was = model.training
        model.eval()
        with torch.no_grad():
            h.update(model_name.encode())
            h.update(_tensor_bytes(model(x)))
        model.train(was)
    h.update(json.dumps([method.selectable_epoch(e) for e in (1, 2)]).encode())
    h.update(json.dumps(sorted(method.extra_state())).encode())
    return h.hexdigest()[:32]


def digest_uninterrupted(name: str) -> str:
    method = build(name)
    torch.manual_seed(11)
    log: list = []
    for epoch in (1, 2):
        run_epoch(method, epoch, log)
    return final_digest(method, log)


def write_checkpoint(name: str, path: Path) -> None:
    """After epoch 1, what trainer/training.py's _state holds of the method, plus the RNG state."""
    method = build(name)
    torch.manual_seed(11)
    log: list = []
    run_epoch(method, 1, log)
    torch.save({"method": method.name,
                "networks": {k: v.state_dict() for k, v in method.networks().items()},
                "optimizers": {k: v.state_dict() for k, v in method.optimizers().items()},
                "method_state": method.extra_state(), "rng": torch.get_rng_state(), "log": log}, path)


def digest_resumed(name: str) -> str:
    from generalist_trainer.trainer.session import load_networks

    state = torch.load(CHECKPOINTS / f"{name}.pt", weights_only=True)
    method = build(name)
    assert state["method"] == method.name
    load_networks(method, state, name)
    for opt_name, opt in method.optimizers().items():
        opt.load_state_dict(state["optimizers"][opt_name])
    method.load_extra_state(state["method_state"])
    torch.set_rng_state(state["rng"])
    # The log round-trips through torch.save as lists and tuples; json.dumps writes both as arrays.
    log = list(state["log"])
    run_epoch(method, 2, log)
    return final_digest(method, log)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # float reductions then add up in one order
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", sorted(CASES))
def test_training_is_bit_identical_to_before_the_refactor(name, one_thread):
    assert digest_uninterrupted(name) == DIGESTS[name]


@pytest.mark.parametrize("name", RESUME_CASES)
def test_a_checkpoint_from_before_the_refactor_resumes_bit_identically(name, one_thread):
    assert digest_resumed(name) == DIGESTS[name]


if __name__ == "__main__":
    torch.set_num_threads(1)
    if "--write-checkpoints" in sys.argv:
        CHECKPOINTS.mkdir(parents=True, exist_ok=True)
        for case in RESUME_CASES:
            write_checkpoint(case, CHECKPOINTS / f"{case}.pt")
    json.dump({name: digest_uninterrupted(name) for name in CASES}, sys.stdout, indent=1)
    print()
