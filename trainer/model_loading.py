"""A trained model back from disk: a run folder, a checkpoint file or an export folder -> an `nn.Module` that
takes [0,1] NCHW inputs and returns (N, C) logits, normalisation inside, DUCAT's 2C head max-folded to C.

No dataset is read for a checkpoint that carries its model metadata (trainer/session.py `model_metadata`,
saved by every checkpoint since it was added); an older checkpoint is rebuilt from its dataset with a note in
the log (`checkpoint_metadata`). The way back: `export_checkpoint` writes a run's shipped model as an export folder.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .checkpoint import check_output_folder, export_safetensors, load_checkpoint, load_export, resolve_checkpoint
from .config import ModelConfig, from_dict
from .errors import CheckpointError, ConfigError
from .eval.class_fold import FoldedLogits
from .models import build_model
from .session import checkpoint_metadata

EXPORT_FILES = ("config.json", "model.safetensors")


def model_from_metadata(meta: Mapping, source: str) -> nn.Module:
    """A freshly initialised model shaped as `meta` (a `model_metadata` dict or an export's config.json) describes:
    the network, or for DUCAT `FoldedLogits` over its 2C-logit network. `source` names the file in errors. The
    caller's RNG stream is kept: the initial weights are drawn inside a forked RNG."""
    try:
        fold = meta.get("class_fold")
        head_classes = int(fold["head_classes"]) if fold else int(meta["num_classes"])
        with torch.random.fork_rng(devices=[]):
            network = build_model(from_dict(ModelConfig, dict(meta["model"]), prefix="model."),
                                  num_classes=head_classes, in_channels=int(meta["in_channels"]),
                                  image_size=int(meta["image_size"]), mean=meta["mean"], std=meta["std"])
        return FoldedLogits(network, fold=fold["fold"]) if fold else network
    except (ValueError, KeyError, TypeError, AttributeError, ConfigError) as exc:
        raise CheckpointError(f"{source}: not a model config this trainer can rebuild "
                              f"({type(exc).__name__}: {exc})") from None


def eval_model_from_checkpoint(state: dict, source: str, name: str | None = None, *,
                               meta: Mapping | None = None) -> tuple[str, nn.Module]:
    """(name, model) of one of a checkpoint's evaluated models, by default the shipped one (the first of the
    method's `eval_models()`: Generalist's global learner, "model" otherwise), on the CPU in eval mode.

    `state` is a loaded checkpoint, `source` its file (for errors), `meta` its `checkpoint_metadata` when the
    caller has it already. Needs no dataset when the checkpoint carries its model metadata.
    """
    meta = checkpoint_metadata(state, source) if meta is None else meta
    network_keys = meta["eval_models"]
    name = next(iter(network_keys)) if name is None else name
    if name not in network_keys:
        raise ConfigError(f"model {name!r}: checkpoint {source} holds the models {list(network_keys)}")
    if network_keys[name] is None:
        raise CheckpointError(f"checkpoint {source}: model {name!r} is computed by its method, not saved as a "
                              "network; it cannot be rebuilt from the checkpoint alone")
    model = model_from_metadata(meta, f"checkpoint {source}")
    # The checkpoint holds the bare networks; a DUCAT model's fold wraps one without weights of its own.
    network = model.network if isinstance(model, FoldedLogits) else model
    try:
        network.load_state_dict(state["networks"][network_keys[name]])
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {source}: network '{name}' does not fit its model metadata "
                              f"({str(exc).splitlines()[0]})") from None
    return name, model.eval()


def is_export_folder(path: str | Path) -> bool:
    """True for a folder written by `export` (model.safetensors + config.json)."""
    folder = Path(path)
    return folder.is_dir() and all((folder / name).is_file() for name in EXPORT_FILES)


def load_model(path: str | Path, which: str = "best", device: str | torch.device = "cpu", *,
               name: str | None = None) -> nn.Module:
    """A trained model in eval mode on `device`: [0,1] NCHW inputs, (N, C) logits, normalisation inside.

    `path`: a run folder (its best.pt, or last.pt with which="last"), a checkpoint file, or an export folder
    (`python -m generalist_trainer export`). `name` picks another of the run's evaluated models (Generalist: "robust" or
    "natural"; default: the shipped one, the global learner). A DUCAT model returns the max-folded C logits,
    exactly what was evaluated. Reads no dataset, unless the checkpoint was written before checkpoints carried
    the model's metadata (then its dataset must be where it was, and a note is logged).
    """
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device {device!r}: expected 'cpu', 'cuda' or 'cuda:N' ({exc})") from None
    p = Path(path)
    if is_export_folder(p):
        model = load_export(p)
        exported = _exported_name(p)
        if name is not None and name != exported:
            raise ConfigError(f"model {name!r}: export {p} holds only the model {exported!r}")
        return model.to(target).eval()
    if not p.exists():
        raise CheckpointError(f"{p}: not found (expected a run folder, a checkpoint file or an export folder)")
    checkpoint = resolve_checkpoint(p, which)
    _, model = eval_model_from_checkpoint(load_checkpoint(checkpoint), str(checkpoint), name)
    return model.to(target).eval()


def _exported_name(folder: Path) -> str | None:
    try:
        return json.loads((folder / "config.json").read_text()).get("exported_network")
    except (OSError, ValueError, AttributeError):
        return None


def export_checkpoint(run_or_file: str | Path, out_dir: Path, which: str = "best") -> Path:
    """Export the shipped model (Generalist: the global learner) as safetensors + config.json.

    The model is the first of `eval_models()`, exactly what was evaluated: for DUCAT the max-folded
    C-logit `FoldedLogits` (weights under `network.`), described by `class_fold` in config.json;
    `load_model` (and `trainer.checkpoint.load_export`) rebuild either kind. Reads no dataset when the checkpoint
    carries its model metadata (trainer/session.py `checkpoint_metadata`).
    """
    check_output_folder(out_dir, "export folder")
    path = resolve_checkpoint(run_or_file, which)
    state = load_checkpoint(path)
    meta = checkpoint_metadata(state, str(path))
    name, model = eval_model_from_checkpoint(state, str(path), meta=meta)
    exported = {k: v for k, v in meta.items() if k != "eval_models"}
    exported.update({"method": state["method"], "exported_network": name, "checkpoint": str(path),
                     "trained_until": state["position"]})
    return export_safetensors(model, out_dir, exported)
