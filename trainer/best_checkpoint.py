"""Which epoch `best.pt` holds: the highest validation score among the epochs that may be selected.

Every epoch may be selected, except under DUCAT, which trains another objective before it starts (its last
fraction of the run): a model from before DUCAT was not trained with it, so once DUCAT's epochs begin the
earlier best is forgotten and selection starts again among DUCAT's epochs only (`Method.selectable_epoch`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class BestCheckpoint:
    """The best validation score so far and its epoch (both None before the first selectable epoch); kept in
    every checkpoint under "best" so that a resumed run selects as an uninterrupted one."""

    score: float | None = None
    epoch: int | None = None

    def update(self, score: float | None, epoch: int, selectable: Callable[[int], bool]) -> bool:
        """Record `epoch`'s validation score (None: no validation split); True when it is the new best."""
        allowed = selectable(epoch)
        if allowed and self.epoch is not None and not selectable(self.epoch):
            self.score = None  # the first epoch of a late objective (DUCAT): earlier bests trained another one
        improved = score is not None and allowed and (self.score is None or score > self.score)
        if improved:
            self.score, self.epoch = score, epoch
        return improved

    def state_dict(self) -> dict:
        return {"score": self.score, "epoch": self.epoch}

    @classmethod
    def from_state(cls, state: dict) -> BestCheckpoint:
        return cls(state["score"], state["epoch"])
