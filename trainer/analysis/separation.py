"""Separation of a dataset in Linf (Yang et al., NeurIPS 2020; spec/lipschitz.md section 1).

For every point, the Linf distance (pixels flattened, in [0, 1]) to the nearest point with a different
label: train-to-train and test-to-train. Points at distance 0 are exact duplicates with conflicting
labels; they are counted, shown by index, and dropped before the minimum and the mean are taken. The
dataset is 2eps-separated when that minimum is >= 2 eps: then a classifier that is both accurate and
robust at radius eps exists.

The search is blocked: a block of queries against a block of references at a time (torch.cdist with
p=inf, which forms no (Q, R, D) intermediate), block sizes chosen from a memory budget, on the GPU when
one is given, chunked on the CPU otherwise.

Exactness: uint8 images are compared as float32 pixel levels 0..255 (every level and every difference
is an exact float32 integer) and the distance is divided by 255 only at the end, in float64. Float
inputs are compared in their own dtype; IEEE subtraction and max are correctly rounded and monotone, so
the result is the true distance rounded once to that dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import ConfigError, DatasetError

# Reference block cap: larger blocks only shrink the query block without speeding cdist up.
_MAX_REF_BLOCK = 8192
DEFAULT_CPU_BUDGET_BYTES = 1 << 30
# Share of the free GPU memory the search may use.
GPU_BUDGET_FRACTION = 0.5
# How many conflicting duplicates are listed by index (all of them are counted).
MAX_EXAMPLES = 10


@dataclass(frozen=True)
class NearestOther:
    """For each query: the Linf distance to its nearest reference with another label, and that reference."""

    distance: np.ndarray  # (Q,) float64, in [0, 1] pixel units; inf where no reference has another label
    index: np.ndarray  # (Q,) int64 index into the references; -1 where none has another label


@dataclass
class SeparationStats:
    """Summary of one direction (train-train or test-train)."""

    name: str
    num_points: int
    # Over the points left after dropping conflicting duplicates (and points with no other label at all).
    min_distance: float
    mean_distance: float
    conflicting_duplicates: int
    duplicate_examples: list[dict] = field(default_factory=list)
    # Points for which every reference carries the same label (only in degenerate data).
    without_other_label: int = 0
    # Index of the point achieving min_distance and of its nearest differently labelled reference.
    closest_pair: dict | None = None

    def verdicts(self, eps_values: list[float]) -> list[dict]:
        """Whether min_distance >= 2 eps for each eps."""
        return [{"eps": e, "two_eps": 2 * e, "separated": bool(self.min_distance >= 2 * e)} for e in eps_values]

    def to_dict(self, eps_values: list[float]) -> dict:
        return {
            "num_points": self.num_points,
            "min_distance": self.min_distance,
            "mean_distance": self.mean_distance,
            "conflicting_duplicates": self.conflicting_duplicates,
            "duplicate_examples": self.duplicate_examples,
            "without_other_label": self.without_other_label,
            "closest_pair": self.closest_pair,
            "two_eps_separated": self.verdicts(eps_values),
        }


def _flat(images: np.ndarray | torch.Tensor, what: str) -> torch.Tensor:
    t = torch.as_tensor(images)
    if t.dim() < 1:
        raise DatasetError(f"separation: {what} is a scalar; expected a batch of images (N, ...)")
    if t.dtype != torch.uint8 and not t.is_floating_point():
        raise DatasetError(f"separation: {what} has dtype {t.dtype}; expected uint8 pixels or floats in [0, 1]")
    return t.reshape(len(t), -1)


def block_sizes(num_queries: int, num_refs: int, dim: int, budget_bytes: int,
                element_bytes: int = 4) -> tuple[int, int]:
    """(query block Q, reference block R) whose working set fits `budget_bytes`.

    Held at once: both blocks in the compute dtype, e D (Q + R) bytes, and per (query, reference) pair
    the distance (e bytes, masked in place) and the same-label mask (1 byte).
    """
    if budget_bytes <= 0:
        raise ConfigError(f"separation memory budget {budget_bytes} bytes: expected a positive number")
    refs = max(1, min(num_refs, _MAX_REF_BLOCK, budget_bytes // (2 * element_bytes * dim)))
    queries = (budget_bytes - element_bytes * dim * refs) // (element_bytes * dim + (element_bytes + 1) * refs)
    return max(1, min(num_queries, queries)), refs


def default_budget(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * GPU_BUDGET_FRACTION)
    return DEFAULT_CPU_BUDGET_BYTES


def nearest_other_label(queries: np.ndarray | torch.Tensor, query_labels: np.ndarray | torch.Tensor,
                        refs: np.ndarray | torch.Tensor, ref_labels: np.ndarray | torch.Tensor, *,
                        device: torch.device | str = "cpu", budget_bytes: int | None = None) -> NearestOther:
    """Linf distance of each query to its nearest reference with a different label (blocked search).

    queries (Q, ...) and refs (R, ...) are both uint8 pixel levels or both floats in [0, 1]; labels are
    integer (Q,) and (R,). A query is never compared with a reference of its own label, so passing the
    same set twice gives the train-train search without special-casing each point itself.
    """
    device = torch.device(device)
    q_all, r_all = _flat(queries, "queries"), _flat(refs, "references")
    if q_all.shape[1] != r_all.shape[1]:
        raise DatasetError(f"separation: queries have {q_all.shape[1]} pixels per image, references "
                           f"{r_all.shape[1]}; expected the same image shape")
    if (q_all.dtype == torch.uint8) != (r_all.dtype == torch.uint8):
        raise DatasetError(f"separation: queries are {q_all.dtype} and references {r_all.dtype}; expected both "
                           "uint8 pixel levels or both floats in [0, 1]")
    yq = torch.as_tensor(query_labels).reshape(-1).long()
    yr = torch.as_tensor(ref_labels).reshape(-1).long()
    if len(yq) != len(q_all) or len(yr) != len(r_all):
        raise DatasetError(f"separation: {len(q_all)} queries with {len(yq)} labels and {len(r_all)} "
                           f"references with {len(yr)} labels; expected one label per image")
    levels = q_all.dtype == torch.uint8
    dtype = torch.float32 if levels else torch.promote_types(q_all.dtype, r_all.dtype)
    budget = default_budget(device) if budget_bytes is None else int(budget_bytes)
    element_bytes = torch.tensor([], dtype=dtype).element_size()
    q_block, r_block = block_sizes(len(q_all), len(r_all), q_all.shape[1], budget, element_bytes)

    best = torch.full((len(q_all),), math.inf, dtype=torch.float64)
    best_index = torch.full((len(q_all),), -1, dtype=torch.int64)
    yq_dev, yr_dev = yq.to(device), yr.to(device)
    for r0 in range(0, len(r_all), r_block):
        ref = r_all[r0:r0 + r_block].to(device=device, dtype=dtype)  # (R, D)
        ref_labels_block = yr_dev[r0:r0 + r_block]
        for q0 in range(0, len(q_all), q_block):
            query = q_all[q0:q0 + q_block].to(device=device, dtype=dtype)  # (Q, D)
            dist = torch.cdist(query.unsqueeze(0), ref.unsqueeze(0), p=math.inf).squeeze(0)  # (Q, R)
            same = yq_dev[q0:q0 + q_block, None] == ref_labels_block[None, :]
            value, index = dist.masked_fill_(same, math.inf).min(dim=1)
            value, index = value.double().cpu(), index.cpu() + r0
            window = slice(q0, q0 + len(query))
            closer = value < best[window]  # strict: ties keep the earlier reference
            best[window] = torch.where(closer, value, best[window])
            best_index[window] = torch.where(closer, index, best_index[window])
    if levels:
        best = best / 255.0
    best_index[torch.isinf(best)] = -1
    return NearestOther(best.numpy(), best_index.numpy())


def summarize(name: str, nearest: NearestOther, query_labels: np.ndarray, ref_labels: np.ndarray) -> SeparationStats:
    """Minimum and mean after dropping conflicting duplicates (distance 0), with examples of those."""
    distance, index = nearest.distance, nearest.index
    query_labels, ref_labels = np.asarray(query_labels), np.asarray(ref_labels)
    duplicates = np.flatnonzero(distance == 0)
    no_other = np.isinf(distance)
    kept = ~no_other & (distance > 0)
    examples = [{"index": int(i), "label": int(query_labels[i]), "duplicate_of": int(index[i]),
                 "other_label": int(ref_labels[index[i]])} for i in duplicates[:MAX_EXAMPLES]]
    if kept.any():
        kept_ids = np.flatnonzero(kept)
        arg = int(kept_ids[np.argmin(distance[kept_ids])])
        closest = {"index": arg, "label": int(query_labels[arg]), "nearest": int(index[arg]),
                   "nearest_label": int(ref_labels[index[arg]])}
        min_d, mean_d = float(distance[arg]), float(distance[kept].mean())
    else:
        closest, min_d, mean_d = None, math.nan, math.nan
    return SeparationStats(name, len(distance), min_d, mean_d, len(duplicates), examples, int(no_other.sum()),
                           closest)


def separation(train_images: np.ndarray, train_labels: np.ndarray, test_images: np.ndarray | None = None,
               test_labels: np.ndarray | None = None, *, device: torch.device | str = "cpu",
               budget_bytes: int | None = None) -> dict[str, SeparationStats]:
    """{"train_train": stats, "test_train": stats} (test_train only when a test set is given)."""
    result = {"train_train": summarize(
        "train_train", nearest_other_label(train_images, train_labels, train_images, train_labels, device=device,
                                           budget_bytes=budget_bytes), train_labels, train_labels)}
    if test_images is not None:
        if test_labels is None:
            raise DatasetError("separation: test images were given without test labels")
        result["test_train"] = summarize(
            "test_train", nearest_other_label(test_images, test_labels, train_images, train_labels, device=device,
                                              budget_bytes=budget_bytes), test_labels, train_labels)
    return result
