"""What a method whose adversarial training is one robust objective forwards to it.

Single-network adversarial training and Generalist's robust expert both train an `Objective`
(trainer/objectives/); the objective, not the method, knows which epochs may be selected (DUCAT's late start),
what state a checkpoint must carry (DUCAT's activation, IAT's per-sample eps), whether the step needs the
batch's dataset indices (IAT) and which attacks run in the step.
"""

from __future__ import annotations

from ..objectives import Objective


class ObjectiveDriven:
    """Mixin placed before `Method` in the bases: `class X(ObjectiveDriven, Method)`. Needs `self.objective`
    and `self.epochs`."""

    objective: Objective
    epochs: int

    @property
    def needs_sample_index(self) -> bool:
        return self.objective.needs_sample_index

    def set_training_size(self, num_samples: int) -> None:
        self.objective.set_training_size(num_samples)

    def training_attacks(self) -> list:
        return self.objective.attacks()

    def selectable_epoch(self, epoch: int) -> bool:
        return self.objective.selectable_epoch(epoch, self.epochs)

    def extra_state(self) -> dict:
        state = super().extra_state()  # type: ignore[misc]
        objective_state = self.objective.extra_state()
        if objective_state:
            state["objective"] = objective_state
        return state

    def load_extra_state(self, state: dict) -> None:
        super().load_extra_state(state)  # type: ignore[misc]
        self.objective.load_extra_state(state.get("objective", {}))
