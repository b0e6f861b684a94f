"""Random streams under data parallelism: random starts keyed by each sample's row in the global batch (different
on every rank, equal to one process), dropout masks per rank (tests/distributed/random_streams_worker.py)."""

import pytest
import torch
from torch import nn

from generalist_trainer.trainer.attacks import PGD, TradesKL

from .test_ddp_gloo import torchrun


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 4, 3))


@pytest.mark.parametrize("make", [lambda: PGD(0.1, 0.05, 0), lambda: PGD(0.5, 0.2, 0, norm="l2"),
                                  lambda: TradesKL(0.1, 0.05, 0)], ids=["pgd_linf", "pgd_l2", "trades_kl"])
def test_in_one_process_the_slices_of_a_batch_draw_its_rows(make):
    model, x = _model(), torch.rand(6, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    y = torch.arange(6) % 3
    torch.manual_seed(4)
    whole = make()(model, x, y)
    for start, stop in ((0, 3), (3, 6), (2, 5)):
        attack = make()
        attack.set_sample_window(start, 6)
        torch.manual_seed(4)
        assert torch.equal(attack(model, x[start:stop], y[start:stop]), whole[start:stop]), (start, stop)
    # Without a window a slice draws as if it were a batch of its own: what every rank drew before, the same noise
    # on each rank's rows (x = 0.5 everywhere, so that no start is clamped and the noise shows as it was drawn).
    half = torch.full_like(x, 0.5)
    torch.manual_seed(4)
    first = make()(model, half[0:3], y[0:3])
    torch.manual_seed(4)
    assert torch.equal(make()(model, half[3:6], y[3:6]), first)


def test_a_window_must_hold_the_batch():
    attack = PGD(0.1, 0.05, 1)
    with pytest.raises(ValueError, match="outside a batch of 4"):
        attack.set_sample_window(4, 4)
    attack.set_sample_window(2, 4)
    with pytest.raises(ValueError, match=r"rows \[2, 5\) do not fit the sample window of 4 rows"):
        attack.window_rows(3)


def test_two_gloo_processes_draw_per_rank_and_together_one_process():
    done = torchrun("-m", "tests.distributed.random_streams_worker", timeout=300)
    assert done.stderr.count("per-rank random streams ok") == 2
