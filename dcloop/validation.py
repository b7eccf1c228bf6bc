"""Checks of user input, run once at the boundary, with messages that name the value."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from dcloop.errors import UserInputError

#: Largest seed numpy and Lightning accept.
MAX_SEED = 2**32 - 1


def check_choice(name: str, value: Any, allowed: tuple) -> None:
    """Raise ``ValueError`` naming ``value`` and the allowed ones."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}; got {value!r}")


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


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_resume_path(path: Any) -> None:
    """Raise :class:`~dcloop.errors.UserInputError` unless ``path`` is a readable checkpoint.

    Lightning writes checkpoints as zip archives (``torch.save``); a file cut short (a run
    killed while saving, a partial copy) has no zip directory at its end. Remote paths
    (``s3://...``) are left to Lightning.
    """
    text = os.fspath(path)
    if "://" in text:
        return
    if not os.path.exists(text):
        raise UserInputError(f"resume={text!r}: no such checkpoint file")
    if not os.path.isfile(text):
        raise UserInputError(f"resume={text!r} is not a file; expected a .ckpt checkpoint")
    if not zipfile.is_zipfile(text):
        raise UserInputError(
            f"resume={text!r} is not a readable checkpoint ({os.path.getsize(text)} bytes, "
            "truncated or not written by torch.save); expected a .ckpt file such as "
            "<run dir>/checkpoints/last.ckpt"
        )


def check_run_config(cfg: Mapping[str, Any]) -> None:
    """Check the top-level run settings of a composed config before anything is built.

    Checks ``seed``, ``folds``, ``trainer.max_epochs`` and ``resume``; the data, model and
    confident-learning groups are checked by the objects they configure.

    Raises:
        UserInputError: naming the key, its value and what is expected.
    """
    seed = cfg.get("seed", 0)
    if not _is_int(seed) or not 0 <= seed <= MAX_SEED:
        raise UserInputError(f"seed must be an integer in [0, {MAX_SEED}]; got seed={seed!r}")
    folds = cfg.get("folds", 5)
    if not _is_int(folds) or folds < 2:
        raise UserInputError(
            f"folds must be an integer >= 2 (K fold replicas give the out-of-fold "
            f"predictions); got folds={folds!r}"
        )
    trainer = cfg.get("trainer") or {}
    epochs = trainer.get("max_epochs") if isinstance(trainer, Mapping) else None
    if epochs is not None and (not _is_int(epochs) or epochs < 1):
        raise UserInputError(
            f"trainer.max_epochs must be an integer >= 1 (out-of-fold predictions come from "
            f"training); got trainer.max_epochs={epochs!r}"
        )
    resume = cfg.get("resume")
    if resume is not None:
        check_resume_path(resume)
