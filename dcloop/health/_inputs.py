"""Checks at the boundary of the data-health functions (private): features and labels."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dcloop.errors import UserInputError

#: Metrics of :func:`dcloop.health.knn.knn`.
METRICS: tuple[str, ...] = ("cosine", "euclidean")


def as_features(x: Any, name: str = "features", *, min_rows: int = 2) -> torch.Tensor:
    """``x`` as a floating ``(N, D)`` tensor (numpy arrays become CPU tensors), checked once.

    Raises:
        UserInputError: not 2-D, too few rows, or NaN/inf values (the message names the
            first bad row).
    """
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    if not isinstance(t, torch.Tensor):
        raise UserInputError(f"{name} must be a torch tensor or numpy array (N, D); got {type(x)}")
    if t.ndim != 2:
        raise UserInputError(f"{name} must be 2-D (N, D); got shape {tuple(t.shape)}")
    if t.shape[0] < min_rows or t.shape[1] < 1:
        raise UserInputError(
            f"{name} needs at least {min_rows} rows and 1 column; got shape {tuple(t.shape)}"
        )
    if not t.is_floating_point():
        t = t.float()
    bad = ~torch.isfinite(t).all(dim=1)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise UserInputError(
            f"{name} hold NaN or inf values ({int(bad.sum())} of {t.shape[0]} rows, first "
            f"row {row}); expected finite features"
        )
    return t


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise UserInputError(f"metric must be one of {list(METRICS)}; got metric={metric!r}")
    return metric


def as_labels(labels: Any, n: int, name: str = "labels") -> torch.Tensor:
    """``(N,)`` int64 labels matching ``n`` rows."""
    t = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    if t.ndim != 1 or t.shape[0] != n:
        raise UserInputError(f"{name} must have shape ({n},); got shape {tuple(t.shape)}")
    if t.is_floating_point() or t.dtype == torch.bool:
        raise UserInputError(f"{name} must be integer class ids; got dtype {t.dtype}")
    if n and int(t.min()) < 0:
        raise UserInputError(f"{name} must be >= 0; got {int(t.min())}")
    return t.long()
