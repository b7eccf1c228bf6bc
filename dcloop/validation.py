"""Checks of user input, run once at the boundary, with messages that name the value."""

from __future__ import annotations

import numpy as np
import torch


def to_numpy(x) -> np.ndarray:
    """Return ``x`` (tensor, array or sequence) as a numpy array on the host."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def check_labels(labels, num_classes: int | None = None) -> np.ndarray:
    """Validate integer labels in ``[0, num_classes)``; return them as ``(N,)`` int64.

    Raises:
        ValueError: labels are not 1-D integers, are empty, or lie outside the range.
    """
    arr = to_numpy(labels)
    if arr.ndim != 1:
        raise ValueError(f"labels must be 1-D (N,); got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError("labels is empty: there is nothing to train on")
    if not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.mod(arr, 1) == 0):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"labels must be integers; got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or (num_classes is not None and hi >= num_classes):
        bound = num_classes if num_classes is not None else "C"
        bad = arr[(arr < 0) | (arr >= (num_classes if num_classes is not None else hi + 1))]
        raise ValueError(
            f"labels must be in [0, {bound}); got min={lo}, max={hi} "
            f"(e.g. {sorted(set(bad.tolist()))[:5]})"
        )
    return arr


def check_all_classes_present(labels: np.ndarray, num_classes: int, what: str = "labels") -> None:
    """Raise ``ValueError`` naming the classes of ``[0, num_classes)`` with no sample."""
    counts = np.bincount(labels, minlength=num_classes)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        raise ValueError(
            f"{what}: class(es) {empty.tolist()} have no samples; every class in "
            f"[0, {num_classes}) needs at least one. Set num_classes to the classes you have "
            f"or add samples."
        )


def check_batch(batch) -> None:
    """Raise ``ValueError`` unless a batch is ``(x, y, index)`` with an integer index."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 3:
        kind = type(batch).__name__
        n = len(batch) if isinstance(batch, (tuple, list)) else "n/a"
        raise ValueError(
            f"dcloop needs dataset items (x, y, index); got a {kind} of length {n}. Wrap "
            "your dataset with dcloop.data.WithIndex or use dcloop.data.IndexedTensorDataset."
        )
    index = batch[2]
    ok = (
        isinstance(index, torch.Tensor)
        and not index.is_floating_point()
        and not (index.dtype == torch.bool)
    )
    if not ok:
        raise ValueError(
            "the third element of each item must be the integer sample index; got "
            f"{type(index).__name__} {getattr(index, 'dtype', '')}"
        )
