"""A small CNN trained in a few seconds on a learnable synthetic task, shared by the attack tests."""

from __future__ import annotations

import pytest
import torch

from generalist_trainer.trainer.config import ModelConfig
from generalist_trainer.trainer.models import build_model

CLASSES = 4
SIZE = 16


def bright_squares(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 1, 16, 16) dim noise with a bright 6x6 square in the quadrant of the label; labels (n,)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    x = 0.3 * torch.rand(n, 1, SIZE, SIZE, generator=g)
    for i, label in enumerate(y.tolist()):
        r, c = 1 + 8 * (label // 2), 1 + 8 * (label % 2)
        x[i, 0, r:r + 6, c:c + 6] = 0.7 + 0.3 * torch.rand(6, 6, generator=g)
    return x, y


def fresh_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelConfig(arch="small_cnn"), num_classes=CLASSES, in_channels=1, image_size=SIZE,
                       mean=(0.3,), std=(0.3,))


@pytest.fixture(scope="session")
def trained_state() -> dict:
    """State dict of a small CNN trained to high clean accuracy (checked) on bright squares."""
    model = fresh_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = bright_squares(512, seed=0)
    model.train()
    for step in range(40):
        idx = torch.arange(64) + 64 * (step % 8)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    xt, yt = bright_squares(128, seed=1)
    with torch.no_grad():
        acc = (model(xt).argmax(1) == yt).float().mean().item()
    assert acc > 0.9, f"the test model did not learn the synthetic task (accuracy {acc:.2f})"
    return model.state_dict()


@pytest.fixture
def model(trained_state) -> torch.nn.Module:
    """A fresh copy of the trained model (in eval mode, no .grad anywhere)."""
    m = fresh_model()
    m.load_state_dict(trained_state)
    return m.eval()


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    return bright_squares(32, seed=2)
