"""No host read inside a training step: every method's steps leave their metrics and the NaN/Inf guard's checks on
the device, and one read at a boundary brings them over (issue 16). On the CPU a read costs nothing, so the test
counts them (tests/engine/helpers.py HostReads): each would be a device sync on a GPU."""

import pytest
import torch

import generalist_trainer.trainer.training as training
from generalist_trainer.trainer.attacks import PGD
from generalist_trainer.trainer.engine.step_metrics import StepAccumulator
from generalist_trainer.trainer.guards import FiniteGuard
from tests.reliability.runs import tiny_config as run_config

from .helpers import HostReads, tiny_batch, tiny_method

DUCAT_ON = ["method.ducat.enabled=true", "method.ducat.start=0.01"]  # active from epoch 1 of 8
METHODS = {
    "natural": ("natural", []),
    "pgd_at": ("pgd_at", []),
    "pgd_at_l2": ("pgd_at", ["attack.norm=l2", "attack.eps=0.5", "attack.step=0.2"]),
    "trades": ("trades", []),
    "rst": ("rst", []),
    "generalist": ("generalist", []),
    "generalist_trades": ("generalist", ["method.generalist.robust_objective=trades"]),
    "pgd_at_ducat": ("pgd_at", DUCAT_ON),
    "trades_ducat": ("trades", DUCAT_ON),
    "generalist_ducat": ("generalist", DUCAT_ON),
    "generalist_trades_ducat": ("generalist", [*DUCAT_ON, "method.generalist.robust_objective=trades"]),
}
STEPS = 3


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("name", sorted(METHODS))
def test_steps_read_nothing_and_one_read_brings_everything_over(name, precision):
    method_name, extra = METHODS[name]
    m = tiny_method("model.dropout=0.3", f"engine.precision={precision}", *extra, method=method_name)
    m.start_epoch(1)
    steps, guard = StepAccumulator(torch.device("cpu")), FiniteGuard(every_steps=1)  # parameter check every step
    counter = HostReads()
    with counter:
        for seed in range(STEPS):
            metrics = m.device_step(*tiny_batch(seed=seed))
            steps.add(metrics, m.global_step)
            guard.after_step(steps, step=m.global_step, networks=m.networks())
    assert counter.reads == [], f"{name} ({precision}): host reads inside the steps: {counter.reads}"
    with counter:
        snapshot = steps.read()
        guard.check(snapshot, epoch=1, networks=m.networks())
    assert counter.reads == ["Tensor.tolist"], counter.reads
    assert snapshot.steps == STEPS and snapshot.step == STEPS and set(snapshot.last) == set(metrics)
    assert snapshot.non_finite is None and snapshot.checks["parameters"] is None
    if precision == "fp16":
        assert "skipped_steps" in snapshot.sums


def test_the_counter_sees_each_read_the_old_step_made():
    """The reads the step made before (issue 16): counted one each, so the tests above can fail."""
    m = tiny_method(method="pgd_at")
    x, y = tiny_batch()
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    scaler.scale(torch.ones(()))  # creates the scale tensor
    old_reads = {
        "the attack's input range check": lambda: PGD(0.1, 0.05, 1)(m.model, x, y),  # its seed draw is not counted
        "the stacked metrics' tolist": lambda: torch.stack([x.sum(), x.mean()]).tolist(),
        "fp16 get_scale": scaler.get_scale,
        "float(loss)": lambda: float(x.sum()),
        "int(count)": lambda: int((x > 0.5).sum()),
    }
    for what, read in old_reads.items():
        counter = HostReads()
        with counter:
            read()
        assert len(counter.reads) == 1, (what, counter.reads)
    # The training attacks skip the range check: the loaders produce [0, 1] by construction.
    counter = HostReads()
    with counter:
        m.objective.attack(m.model, x, y)
    assert counter.reads == []


def test_the_training_loop_reads_once_per_boundary(tmp_path, monkeypatch):
    """Through train(): 8 steps in 2 epochs, logged every 2 steps, a parameter check every step, no checkpoint
    before the epoch's end. The steps read nothing; each boundary (4 logged steps, 2 epoch ends) is one copy."""
    counters = {"in_steps": HostReads(), "copies": 0}
    real_read = StepAccumulator.read

    def counted_read(self):
        fresh = self._dirty or self._snapshot is None
        counter = HostReads()
        with counter:
            snapshot = real_read(self)
        assert len(counter.reads) == (1 if fresh else 0), counter.reads
        counters["copies"] += fresh
        return snapshot

    def inside(fn):
        def wrapped(*args, **kwargs):
            with counters["in_steps"]:
                return fn(*args, **kwargs)
        return wrapped

    real_open = training.open_session

    def open_session(cfg):
        session = real_open(cfg)
        session.method.device_step = inside(session.method.device_step)
        return session

    monkeypatch.setattr(training, "open_session", open_session)
    monkeypatch.setattr(StepAccumulator, "read", counted_read)
    monkeypatch.setattr(StepAccumulator, "add", inside(StepAccumulator.add))
    monkeypatch.setattr(FiniteGuard, "after_step", inside(FiniteGuard.after_step))
    result = training.train(run_config(tmp_path, "train.log_every_steps=2", "train.finite_check_every_steps=1"))
    assert result.finished and result.global_step == 8
    assert counters["in_steps"].reads == []
    assert counters["copies"] == 8 // 2  # the epoch ends fall on logged steps: their reads are the same copy
