"""Adversarially robust training: Generalist (bi-expert AT), PGD-AT, TRADES, RST and DUCAT, as a library.

    import trainer
    cfg = trainer.load_config("configs/fashion_mnist_generalist.yaml", ["train.epochs=3"])
    result = trainer.train(cfg)                                  # -> TrainResult (run_dir, finished, ...)
    model = trainer.load_model(result.run_dir)                   # [0,1] inputs -> C logits, no dataset needed
    accuracies = trainer.evaluate(model, x, y, eps=0.1)          # any [0,1]-in / logits-out nn.Module
    x_adv = trainer.attacks.PGD(eps=0.1, step=0.01, steps=20)(model, x, y)

The names below are imported on first use, so `import trainer` stays cheap (the CLI is `python -m trainer`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the module that defines it (relative to this package, so that moving the package root is a rename).
_EXPORTS = {
    "load_config": ".config",
    "RunConfig": ".config",
    "train": ".training",
    "TrainResult": ".training",
    "load_model": ".model_loading",
    "evaluate": ".eval.any_model",
}
_SUBPACKAGES = ("attacks",)

__all__ = ["RunConfig", "TrainResult", "__version__", "attacks", "evaluate", "load_config", "load_model", "train"]

if TYPE_CHECKING:
    from . import attacks
    from .config import RunConfig, load_config
    from .eval.any_model import evaluate
    from .model_loading import load_model
    from .training import TrainResult, train


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    elif name in _SUBPACKAGES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
