"""Instance-adaptive adversarial training (Y. Balaji, T. Goldstein, J. Hoffman, "Instance adaptive adversarial
training: Improved accuracy tradeoffs in neural nets", arXiv 1910.08051): PGD-AT whose radius is one eps_i per
training sample, kept in a table (N,) and updated each time the sample is visited (once per epoch).

The rule is the one of the authors' code (github.com/yogeshbalaji/Instance_Adaptive_Adversarial_Training,
trainers/trainer_adaptive.py, `epsilon_select`); the paper's text was not at hand to compare with. For a batch with
dataset indices I, clean correctness c_i = [argmax f(x_i) = y_i], gamma = `method.iat.gamma`, beta = `method.iat.beta`:
- warm-up epochs (the first `method.iat.warmup_epochs`): eps_i <- c_i * attack.eps;
- afterwards, with e = eps_i from the table: PGD at radius e and at e + gamma; r_e, r_hi = whether the prediction
  of each result is still y_i;
      new_i = e + gamma if r_hi, else e if r_e, else e - gamma;   new_i <- max(c_i * new_i, 0)
      eps_i <- beta * new_i + (1 - beta) * e
- then x_adv = PGD at radius eps_i, and the loss is the cross-entropy on x_adv (PGD-AT's).
Every PGD here takes step_i = max(2 eps_i / attack.steps, attack.step) per sample (the authors' `attack_lr` rule)
and a random start. A step after warm-up therefore runs three PGDs, one in warm-up; both add a clean forward.
The authors' defaults (CIFAR-10, eps 8/255, 110 epochs): gamma 1.9/255, beta 0.1, 10 warm-up epochs.

Where we depart, our choices:
- The clean check and the two probing PGDs run the model in eval mode (the attack contract, trainer/attacks/base.py:
  BatchNorm statistics untouched); the authors' code runs them in train mode, so its BatchNorm running statistics
  also move with these forwards.
- `method.iat.max_eps` optionally caps eps_i (the authors' code has no upper bound; null keeps none).
- With attack.norm l2 the same rule and step rule apply to the L2 radius (ours; the authors' configs are L-inf).
- The table starts at 0 and lives on the training device; it is saved with every checkpoint (exact resume).
- Under torchrun each rank updates its slice's rows and all ranks exchange them every step (one all-gather of
  the batch's indices and eps), so the tables stay identical; the random starts follow the global batch's rows.
- Not supported (flagged, the config refuses them): DUCAT (the robustness checks would need the folded prediction
  of the 2C head) and CUDA graphs (the captured step takes no index).
"""

from __future__ import annotations

import torch
from torch import nn

from ..attacks.base import eval_mode
from ..attacks.per_sample_pgd import PerSamplePGD
from ..config import IatConfig
from ..distributed import all_gather_rows
from ..engine import phase
from ..engine.step_metrics import StepMetrics, mean_metric
from ..errors import CheckpointError
from ..registry import OBJECTIVES
from .base import Objective, batch_accuracy, cross_entropy


def predicts_label(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N,) bool: the model (in eval mode) predicts y for each row of x."""
    with torch.no_grad(), eval_mode(model):
        return model(x).argmax(1) == y


@OBJECTIVES.register("iat", supports_ducat=False, graph_capturable=False)
class IAT(Objective):
    """PGD-AT with per-sample eps (module docstring); needs each batch's dataset indices."""

    name = "iat"
    needs_sample_index = True

    def __init__(self, attack: PerSamplePGD, cfg: IatConfig, device: torch.device | str = "cpu"):
        super().__init__(attack)
        self.cfg = cfg
        self.device = torch.device(device)
        self.warmup = True
        # (N,) fp32 on the training device: eps_i of every training sample; sized by `set_training_size`.
        self.eps_table: torch.Tensor | None = None
        self.last_eps: torch.Tensor | None = None  # (N,) the last batch's eps_i, for the step metrics

    @classmethod
    def from_config(cls, cfg, engine) -> IAT:
        a = cfg.attack
        attack = PerSamplePGD(a.eps, a.step, a.steps, norm=a.norm, random_start=a.random_start)
        attack.check_input_range = False  # as build_train_attack: the loaders produce [0, 1] by construction
        return cls(attack, cfg.method.iat, engine.device)

    def set_training_size(self, num_samples: int) -> None:
        """Allocate the table (zeros) for a training set of `num_samples` (dataset indices 0 .. num_samples - 1)."""
        self.eps_table = torch.zeros(num_samples, dtype=torch.float32, device=self.device)

    def start_epoch(self, epoch: int, total_epochs: int) -> dict[str, float]:
        self.warmup = epoch <= self.cfg.warmup_epochs
        return {"iat_warmup": float(self.warmup)}

    def step_sizes(self, eps: torch.Tensor) -> torch.Tensor:
        """(N,) PGD step per sample: max(2 eps_i / steps, attack.step)."""
        return (eps / (0.5 * max(self.attack.steps, 1))).clamp_min(self.attack.step)

    def robust_at(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """(N,) bool: PGD at radius eps_i leaves the prediction at y_i."""
        return predicts_label(model, self.attack(model, x, y, eps=eps, step=self.step_sizes(eps)), y)

    def updated_eps(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The batch's new eps_i (N,) (module docstring); the table is not written here."""
        correct = predicts_label(model, x, y).float()  # (N,) c_i
        if self.warmup:
            return correct * self.attack.eps
        gamma = self.cfg.gamma
        current = self.eps_table[index]  # (N,)
        higher = current + gamma
        robust_current = self.robust_at(model, x, y, current)  # the authors' order: current, then higher
        robust_higher = self.robust_at(model, x, y, higher)
        new = torch.where(robust_higher, higher, torch.where(robust_current, current, current - gamma))
        new = (new * correct).clamp_min(0.0)
        if self.cfg.max_eps is not None:
            new = new.clamp_max(self.cfg.max_eps)
        return self.cfg.beta * new + (1 - self.cfg.beta) * current

    def adversarial(self, attack_model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    index: torch.Tensor | None = None) -> torch.Tensor:
        if index is None:
            raise ValueError("objective 'iat': needs the batch's dataset indices (index=...) to keep its per-sample "
                             "eps; the training loop passes them (loader.batch_indices)")
        if self.eps_table is None:
            raise ValueError("objective 'iat': the eps table is not sized; call set_training_size(N) first")
        with phase("attack"):
            eps = self.updated_eps(attack_model, x, y, index)
            # Under torchrun every rank writes every rank's rows, so the tables stay identical (training drops
            # partial batches: each rank holds B / W rows). In one process this is table[index] = eps.
            self.eps_table[all_gather_rows(index)] = all_gather_rows(eps)
            self.last_eps = eps
            return self.attack(attack_model, x, y, eps=eps, step=self.step_sizes(eps))

    def loss(self, train_model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor
             ) -> tuple[torch.Tensor, StepMetrics]:
        train_model.train()
        logits = train_model(x_adv)
        metrics: StepMetrics = {"adv_acc": mean_metric(batch_accuracy(logits, y))}
        if self.last_eps is not None:
            metrics["iat_eps"] = mean_metric(self.last_eps.mean())
        return cross_entropy(logits, y), metrics

    def extra_state(self) -> dict:
        return {} if self.eps_table is None else {"iat_eps": self.eps_table.detach().cpu().clone()}

    def load_extra_state(self, state: dict) -> None:
        saved = state.get("iat_eps")
        if saved is None:
            return
        if self.eps_table is None or saved.shape != self.eps_table.shape:
            size = None if self.eps_table is None else tuple(self.eps_table.shape)
            raise CheckpointError(f"objective 'iat': the checkpoint's eps table has shape {tuple(saved.shape)}, "
                                  f"this run's training set needs {size}")
        self.eps_table.copy_(saved)
