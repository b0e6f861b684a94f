"""The max-fold wrapper decides exactly as argmax-then-mod-C (ties included); the logsumexp-fold sums pairs."""

import pytest
import torch
from torch import nn

from generalist_trainer.trainer.attacks import eval_mode
from generalist_trainer.trainer.eval.class_fold import (
    FoldedLogits,
    argmax_mod_classes,
    fold_logsumexp,
    fold_max,
    fold_models,
    logsumexp_view,
)


def reference_prediction(row: list[float], num_classes: int) -> int:
    """argmax over the 2C columns then mod C; ties: the smallest class among all maximal columns."""
    top = max(row)
    return min(i % num_classes for i, v in enumerate(row) if v == top)


class Fixed(nn.Module):
    """Returns the given logits whatever the input (a stand-in network with a 2C head)."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.register_buffer("logits", logits)
        self.num_classes = logits.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[: x.shape[0]]


@pytest.mark.parametrize("num_classes", [1, 2, 3, 10])
def test_wrapper_decides_as_argmax_mod_c_on_random_logits(num_classes):
    gen = torch.Generator().manual_seed(num_classes)
    logits = torch.randn(500, 2 * num_classes, generator=gen)
    folded = FoldedLogits(Fixed(logits))(torch.zeros(500, 1))
    assert folded.shape == (500, num_classes)
    # Continuous random logits have no ties: the literal argmax-mod-C applies.
    literal = logits.argmax(1) % num_classes
    assert torch.equal(folded.argmax(1), literal)
    assert torch.equal(argmax_mod_classes(logits), literal)


def test_wrapper_decides_as_argmax_mod_c_on_constructed_ties():
    rows = [
        [0.0, 5.0, 5.0, 0.0],            # dummy of class 0 ties real class 1: class 0
        [5.0, 0.0, 5.0, 0.0],            # class 0 ties its own dummy
        [0.0, 5.0, 0.0, 5.0],            # class 1 ties its own dummy
        [1.0, 1.0, 1.0, 1.0],            # everything ties
        [0.0, 0.0, 3.0, 3.0],            # both dummies tie
        [3.0, 3.0, 0.0, 0.0],            # both real classes tie
        [0.0, 2.0, 0.0, 2.0],            # pair tie at class 1 only
    ]
    logits = torch.tensor(rows)
    expected = torch.tensor([reference_prediction(r, 2) for r in rows])
    assert expected.tolist() == [0, 0, 1, 0, 0, 0, 1]
    assert torch.equal(FoldedLogits(Fixed(logits))(torch.zeros(len(rows), 1)).argmax(1), expected)
    assert torch.equal(argmax_mod_classes(logits), expected)
    # Why the tie rule must be stated: the literal first-column argmax gives class 1 on the first row.
    assert int(logits[0].argmax()) % 2 == 1


@pytest.mark.parametrize("num_classes", [2, 5])
def test_wrapper_matches_the_reference_on_many_random_ties(num_classes):
    # Integer logits in a small range: most rows have ties, within and across pairs.
    gen = torch.Generator().manual_seed(7)
    logits = torch.randint(0, 3, (2000, 2 * num_classes), generator=gen).float()
    expected = torch.tensor([reference_prediction(r, num_classes) for r in logits.tolist()])
    assert torch.equal(fold_max(logits).argmax(1), expected)
    assert torch.equal(argmax_mod_classes(logits), expected)


def test_folds_are_the_pairwise_max_and_logsumexp():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 8, generator=gen, dtype=torch.float64)
    real, dummy = logits[:, :4], logits[:, 4:]
    torch.testing.assert_close(fold_max(logits), torch.where(real >= dummy, real, dummy))
    torch.testing.assert_close(fold_logsumexp(logits), torch.log(real.exp() + dummy.exp()))
    # The softmax of the logsumexp-fold is the summed probability of each class and its dummy.
    p = logits.softmax(1)
    torch.testing.assert_close(fold_logsumexp(logits).softmax(1), p[:, :4] + p[:, 4:])


def test_odd_logit_count_is_refused():
    with pytest.raises(ValueError, match="even"):
        fold_max(torch.zeros(2, 5))


def test_wrapper_is_a_view_of_the_network():
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 6), nn.BatchNorm1d(6))
    net.num_classes = 6
    wrapped = FoldedLogits(net)
    assert wrapped.num_classes == 3 and list(wrapped.parameters()) == list(net.parameters())
    assert set(wrapped.state_dict()) == {f"network.{k}" for k in net.state_dict()}
    net.train()
    with eval_mode(wrapped):
        assert not net[2].training  # eval_mode on the wrapper reaches the network's BatchNorm
    assert net[2].training
    lse = logsumexp_view(wrapped)
    assert isinstance(lse, FoldedLogits) and lse.fold == "logsumexp" and lse.network is net
    assert set(fold_models({"a": net, "b": net})) == {"a", "b"}


def test_logsumexp_view_leaves_a_plain_model_alone():
    net = nn.Linear(3, 3)
    assert logsumexp_view(net) is net
