"""Small input-validation helpers shared by the data layer (private)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def as_label_array(labels: Any, *, name: str = "labels") -> np.ndarray:
    """Converts array-like integer labels to a 1-D ``np.int64`` array.

    Args:
        labels: Array-like of integer class ids, shape (N,). A list, NumPy array or tensor.
        name: Name used in error messages.

    Returns:
        A new ``np.ndarray`` of dtype int64, shape (N,).

    Raises:
        ValueError: If ``labels`` is not one-dimensional or holds non-integer values.
    """
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional (N,), got shape {tuple(arr.shape)}")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype == bool or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise ValueError(f"{name} must hold integer class ids, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating):
        bad = ~np.isfinite(arr) | (arr != np.round(arr))
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{name} must hold integer class ids; row {first} holds {arr[first]!r}"
            )
    return arr.astype(np.int64, copy=True)


def check_label_range(labels: np.ndarray, num_classes: int, *, name: str = "labels") -> None:
    """Checks that every label lies in ``[0, num_classes)``.

    Args:
        labels: Integer labels, shape (N,).
        num_classes: Number of classes C.
        name: Name used in error messages.

    Raises:
        ValueError: Naming up to five offending rows and their values.
    """
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        shown = ", ".join(f"row {int(i)}: {int(labels[i])}" for i in bad[:5])
        raise ValueError(
            f"{name} must lie in [0, {num_classes}) for num_classes={num_classes}; "
            f"{bad.size} value(s) outside that range ({shown})"
        )


def check_num_classes(num_classes: Any, *, name: str = "num_classes") -> int:
    """Validates a class count.

    Args:
        num_classes: The value to check.
        name: Name used in error messages.

    Returns:
        ``num_classes`` as a Python int.

    Raises:
        ValueError: If it is not an integer >= 1.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise ValueError(f"{name} must be an int >= 1, got {num_classes!r}")
    if num_classes < 1:
        raise ValueError(f"{name} must be an int >= 1, got {num_classes}")
    return int(num_classes)


def preview(values: Sequence[Any], limit: int = 5) -> str:
    """Formats up to ``limit`` values for an error message, with the total count.

    Args:
        values: Values to show.
        limit: How many to show at most.

    Returns:
        A string such as ``"'a', 'b', ... (7 in total)"``.
    """
    shown = ", ".join(repr(str(v)) for v in list(values)[:limit])
    more = f", ... ({len(values)} in total)" if len(values) > limit else ""
    return shown + more
