"""Folding DUCAT's 2C logits back to C classes for prediction, evaluation and export (spec/ducat.md).

A DUCAT head has 2C columns: column k is real class k and column k + C its dummy. A prediction of
either column means class k. Two folds give C logits per input:

- max-fold, z_k = max(z_k, z_{k+C}): decision-identical to argmax-then-mod-C, so every attack and
  AutoAttack run on `FoldedLogits(net)` measure the accuracy the deployed model really has. This is
  what evaluation and export use. (The authors ran AutoAttack on the raw 2C model, which counts every
  dummy prediction as an error.)
- logsumexp-fold, z_k = log(e^{z_k} + e^{z_{k+C}}): the softmax of these C logits is the summed
  probability p_k + p_{k+C}, so cross-entropy on it attacks the total mass of the true class. Its
  gradient is smooth where the max-fold's switches between the two columns; it is the adaptive attack
  (`pgd_lse`), reported separately.

Tie rule. `torch.argmax` returns the FIRST maximal index. For the max-fold that is the smallest real
class k whose pair holds a maximal logit; a literal argmax over the 2C columns followed by mod C would
instead return the class of the first maximal COLUMN, and the two differ when a dummy column C + j
ties with a real column k > j (e.g. C = 2, z = [0, 5, 5, 0]: the 2C argmax is column 1 -> class 1, the
max-fold gives [5, 5] -> class 0). We define argmax-then-mod-C with the tie rule "the smallest class
among all maximal columns" (`argmax_mod_classes`), which the max-fold's argmax reproduces exactly, ties
included; without ties both rules agree with the literal one.
"""

from __future__ import annotations

import torch
from torch import nn

FOLDS = ("max", "logsumexp")


def _pairs(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 2C) logits -> the real columns (N, C) and their dummies (N, C)."""
    if logits.dim() != 2 or logits.shape[1] % 2 != 0 or logits.shape[1] == 0:
        raise ValueError(f"class fold: expected (N, 2C) logits with an even, non-zero number of columns, "
                         f"got shape {tuple(logits.shape)}")
    num_classes = logits.shape[1] // 2
    return logits[:, :num_classes], logits[:, num_classes:]


def fold_max(logits: torch.Tensor) -> torch.Tensor:
    """(N, 2C) -> (N, C) with z_k = max(z_k, z_{k+C})."""
    real, dummy = _pairs(logits)
    return torch.maximum(real, dummy)


def fold_logsumexp(logits: torch.Tensor) -> torch.Tensor:
    """(N, 2C) -> (N, C) with z_k = logsumexp(z_k, z_{k+C}): softmax gives p_k + p_{k+C}."""
    real, dummy = _pairs(logits)
    return torch.logaddexp(real, dummy)


def argmax_mod_classes(logits: torch.Tensor) -> torch.Tensor:
    """DUCAT's prediction from (N, 2C) logits: argmax over the 2C columns, then mod C -> (N,) int64.

    Ties: the smallest class among all maximal columns (see the module docstring). Computed in the 2C
    space, independently of the folds, so it can serve as their reference.
    """
    real, _ = _pairs(logits)
    num_classes = real.shape[1]
    tied = logits == logits.amax(dim=1, keepdim=True)  # (N, 2C) maximal columns
    column_class = torch.arange(2 * num_classes, device=logits.device) % num_classes  # (2C,)
    # Non-maximal columns get C, larger than any class, so the min picks among the maximal ones.
    return torch.where(tied, column_class, num_classes).amin(dim=1)


_FOLD_FUNCTIONS = {"max": fold_max, "logsumexp": fold_logsumexp}


class FoldedLogits(nn.Module):
    """Wraps a 2C-logit DUCAT network so that it returns C logits (the max-fold by default).

    The wrapper has no parameters of its own: its state_dict is the network's under the `network.`
    prefix, and `eval_mode` / `.train()` reach the network through the usual module tree.
    """

    def __init__(self, network: nn.Module, fold: str = "max"):
        super().__init__()
        if fold not in _FOLD_FUNCTIONS:
            raise ValueError(f"FoldedLogits: fold = {fold!r}, expected one of {FOLDS}")
        self.network = network
        self.fold = fold
        head = getattr(network, "num_classes", None)
        # The classifier convention: `num_classes` is the number of logits the module returns.
        self.num_classes = head // 2 if isinstance(head, int) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C_in, H, W) in [0,1] -> (N, C) folded logits."""
        return _FOLD_FUNCTIONS[self.fold](self.network(x))

    def extra_repr(self) -> str:
        return f"fold={self.fold!r}"


def fold_models(models: dict[str, nn.Module]) -> dict[str, nn.Module]:
    """Every model max-folded: what a DUCAT method's `eval_models()` returns."""
    return {name: FoldedLogits(net) for name, net in models.items()}


def logsumexp_view(model: nn.Module) -> nn.Module:
    """The logsumexp-folded view of a max-folded DUCAT model (same network, shared weights).

    Any other model is returned unchanged: for a plain C-logit model the adaptive attack is an
    ordinary PGD on its own logits (the fold is the identity there).
    """
    if isinstance(model, FoldedLogits):
        return FoldedLogits(model.network, fold="logsumexp")
    return model
