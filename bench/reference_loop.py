"""The reference-style Generalist loop (spec/performance.md "The reference-style loop"): the computational
structure of the authors' code, re-implemented in our own code, as the baseline the end-to-end benchmark
compares the trainer against.

What makes it "reference style", each point as the spec lists it:
- fp32 eager PyTorch: no autocast, no channels_last, no compile, no graphs, torch's default cuDNN/TF32 switches;
- a torch DataLoader whose workers crop (zero padding) and flip each image on the CPU, one sample at a time,
  as torchvision's RandomCrop(size, padding) + RandomHorizontalFlip + ToTensor do; batches are then copied
  to the device;
- the two experts one after the other on the default stream;
- PGD that calls loss.backward() at every step (so it also computes every weight gradient, and throws them
  away), with the sign step and projection written out in torch ops;
- the moving averages per tensor through state_dict(), G's state_dict rebuilt for every key (the same
  function the averaging benchmark times as `state_dict_per_key`).
The arithmetic is Generalist's (spec/generalist.md): the same model, optimisers, decay, beta and PGD as the
trainer, so the two do the same useful work per image and their images/s compare directly.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..trainer.data import ArrayDataset
from ..trainer.engine.phases import phase
from .bench_averaging import state_dict_per_key_update


class AugmentedImages(torch.utils.data.Dataset):
    """Sample i: ToTensor (uint8 HWC -> float CHW in [0,1]), random crop after zero padding, random flip.
    The randomness comes from each DataLoader worker's torch generator, as torchvision's transforms draw it."""

    def __init__(self, dataset: ArrayDataset, padding: int, flip: bool):
        self.images = dataset.images  # (N, H, W, C) uint8
        self.labels = dataset.labels  # (N,) int64
        self.padding = padding
        self.flip = flip

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = torch.from_numpy(np.ascontiguousarray(self.images[i])).permute(2, 0, 1).float().div_(255.0)
        _, h, w = img.shape
        p = self.padding
        if p > 0:
            padded = F.pad(img, (p, p, p, p))  # zeros, as RandomCrop(padding=p) fills
            top = int(torch.randint(0, 2 * p + 1, (1,)))
            left = int(torch.randint(0, 2 * p + 1, (1,)))
            img = padded[:, top:top + h, left:left + w]
        if self.flip and float(torch.rand(1)) < 0.5:
            img = img.flip(-1)
        return img.contiguous(), int(self.labels[i])


def reference_loader(dataset: ArrayDataset, batch_size: int, *, padding: int, flip: bool, num_workers: int,
                     seed: int) -> torch.utils.data.DataLoader:
    """Shuffled, drop_last batches of (B, C, H, W) float CPU tensors and (B,) int64 labels."""
    return torch.utils.data.DataLoader(
        AugmentedImages(dataset, padding, flip), batch_size=batch_size, shuffle=True, drop_last=True,
        num_workers=num_workers, persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed))


def endless(loader: torch.utils.data.DataLoader, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The loader's batches epoch after epoch, copied to the device as such code does (.to(device))."""
    while True:
        for x, y in loader:
            yield x.to(device), y.to(device)


def pgd_with_backward(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step: float,
                      steps: int) -> torch.Tensor:
    """PGD-k Linf with a uniform random start, as research AT code writes it: loss.backward() at each step
    (computing the weight gradients too), then x_adv + step * sign(grad), projected and clamped."""
    model.eval()  # BatchNorm uses its running statistics while attacking
    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0.0, 1.0)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        model.zero_grad()
        loss.backward()
        x_adv = x_adv.detach() + step * x_adv.grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
    model.zero_grad()
    model.train()
    return x_adv.detach()


class ReferenceGeneralist:
    """Generalist's iteration in the reference style; `step(x, y)` returns (robust loss, natural loss)."""

    def __init__(self, model_factory: Callable[[], nn.Module], device: torch.device, *, eps: float, step: float,
                 steps: int, lr: float, momentum: float, robust_weight_decay: float, natural_weight_decay: float,
                 natural_lr: float | None = None, natural_momentum: float | None = None, beta: float = 1.0,
                 decay_max: float = 0.999, decay_warmup: float = 10.0):
        origin = model_factory().to(device)
        self.robust = origin
        self.natural = copy.deepcopy(origin)
        self.avg_robust = copy.deepcopy(origin)
        self.avg_natural = copy.deepcopy(origin)
        self.global_model = copy.deepcopy(origin)
        self.robust_optimizer = torch.optim.SGD(self.robust.parameters(), lr=lr, momentum=momentum,
                                                weight_decay=robust_weight_decay)
        self.natural_optimizer = torch.optim.SGD(
            self.natural.parameters(), lr=lr if natural_lr is None else natural_lr,
            momentum=momentum if natural_momentum is None else natural_momentum, weight_decay=natural_weight_decay)
        self.eps, self.step_size, self.steps = eps, step, steps
        self.beta, self.decay_max, self.decay_warmup = beta, decay_max, decay_warmup
        self.k = 0

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        with phase("robust_update"):
            with phase("attack"):
                x_adv = pgd_with_backward(self.robust, x, y, self.eps, self.step_size, self.steps)
            self.robust.train()
            self.robust_optimizer.zero_grad()
            robust_loss = F.cross_entropy(self.robust(x_adv), y)
            robust_loss.backward()
            self.robust_optimizer.step()
        with phase("natural_update"):
            self.natural.train()
            self.natural_optimizer.zero_grad()
            natural_loss = F.cross_entropy(self.natural(x), y)
            natural_loss.backward()
            self.natural_optimizer.step()
        with phase("averaging"):
            decay = min(self.decay_max, (self.k + 1) / (self.k + self.decay_warmup))
            state_dict_per_key_update([self.robust, self.natural, self.avg_robust, self.avg_natural,
                                       self.global_model], decay, self.beta)
        self.k += 1
        return robust_loss.item(), natural_loss.item()
