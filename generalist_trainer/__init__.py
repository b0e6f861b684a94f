"""Adversarially robust training: Generalist (bi-expert AT), PGD-AT, TRADES, RST, MART, FAT and DUCAT, as a library.

    import generalist_trainer as gt
    cfg = gt.load_config("configs/fashion_mnist_generalist.yaml", ["train.epochs=3"])
    result = gt.train(cfg)                                       # -> TrainResult (run_dir, finished, ...)
    gt.resume(result.run_dir, ["train.epochs=5"], change_length=True)  # continue a stopped (or longer) run
    model = gt.load_model(result.run_dir)                        # [0,1] inputs -> C logits, no dataset needed
    accuracies = gt.evaluate(model, x, y, eps=0.1)               # any [0,1]-in / logits-out nn.Module
    x_adv = gt.attacks.PGD(eps=0.1, step=0.01, steps=20)(model, x, y)

The names below are imported on first use, so the import stays cheap. The CLI is `python -m generalist_trainer`
(or the `generalist-trainer` script).

Layout: the subpackages `generalist_trainer.trainer` (training, evaluation, the CLI), `generalist_trainer.kernels`
(Triton / CUDA kernels beside their torch references) and `generalist_trainer.bench` (benchmarks). In a checkout
they are the top-level folders trainer/, kernels/ and bench/ beside this one; installed, they are inside it, so
that none of the three common names is installed at the top level of site-packages (where Hugging Face's
`kernels` and Coqui's `trainer` live).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# In a checkout the subpackages are the folders beside this one (the layout the repository keeps); an installed
# wheel has them inside this folder (pyproject.toml's package-dir mapping), where the normal search finds them.
if not (Path(__file__).parent / "trainer").is_dir():
    __path__.append(str(Path(__file__).resolve().parent.parent))

# Public name -> the module that defines it (relative to this package, so that moving the package root is a rename).
_EXPORTS = {
    "load_config": ".trainer.config",
    "RunConfig": ".trainer.config",
    "train": ".trainer.training",
    "resume": ".trainer.training",
    "TrainResult": ".trainer.training",
    "load_model": ".trainer.model_loading",
    "evaluate": ".trainer.eval.any_model",
}
_SUBPACKAGES = {"attacks": ".trainer.attacks"}

__all__ = ["RunConfig", "TrainResult", "__version__", "attacks", "evaluate", "load_config", "load_model", "resume",
           "train"]

if TYPE_CHECKING:
    from .trainer import attacks
    from .trainer.config import RunConfig, load_config
    from .trainer.eval.any_model import evaluate
    from .trainer.model_loading import load_model
    from .trainer.training import TrainResult, resume, train


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    elif name in _SUBPACKAGES:
        value = importlib.import_module(_SUBPACKAGES[name], __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
