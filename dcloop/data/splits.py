"""Stratified, seeded train/val/test splits shared by every data source."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from dcloop._checks import as_label_array, check_float

logger = logging.getLogger(__name__)


def _check_fracs(val_frac: float, test_frac: float) -> None:
    for name, value in (("val_frac", val_frac), ("test_frac", test_frac)):
        check_float(name, value, low=0, high=1, high_open=True)
    if val_frac + test_frac >= 1.0:
        raise ValueError(
            f"val_frac + test_frac must be < 1 so that a training split remains, got "
            f"val_frac={val_frac} + test_frac={test_frac} = {val_frac + test_frac}"
        )


def _split_off(
    idx: np.ndarray, labels: np.ndarray, frac: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Splits ``idx`` into (rest, held_out) with ``frac`` of it held out, stratified."""
    if frac <= 0.0 or idx.size == 0:
        return idx, np.zeros(0, dtype=np.int64)
    rest, held = train_test_split(idx, test_size=frac, random_state=seed, stratify=labels[idx])
    return np.sort(rest), np.sort(held)


def _per_class_split(
    labels: np.ndarray, val_frac: float, test_frac: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fallback split for tiny data: per class, keeps at least one sample in train."""
    rng = np.random.default_rng(seed)
    train, val, test = [], [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n = members.size
        n_test = min(int(round(test_frac * n)), n - 1)
        n_val = min(int(round(val_frac * n)), n - 1 - n_test)
        test.append(members[:n_test])
        val.append(members[n_test : n_test + n_val])
        train.append(members[n_test + n_val :])
    return tuple(np.sort(np.concatenate(p)).astype(np.int64) for p in (train, val, test))


def stratified_split_indices(
    labels: Any, *, seed: int = 0, val_frac: float = 0.15, test_frac: float = 0.2
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Splits row ids into stratified, seeded train/val/test parts.

    The test part is split off first (``test_frac`` of all rows), then the validation part
    (``val_frac`` of all rows, i.e. ``val_frac / (1 - test_frac)`` of the remainder), both with
    scikit-learn's ``train_test_split(stratify=labels)``. If the data is too small for that
    (a class with a single sample, or fewer held-out rows than classes), a per-class split is
    used instead that keeps at least one sample of every class in train; a warning is logged.

    Args:
        labels: Integer labels, shape (N,).
        seed: Random seed; the same seed gives the same split.
        val_frac: Fraction of all rows for validation, in [0, 1).
        test_frac: Fraction of all rows for test, in [0, 1).

    Returns:
        ``(train_idx, val_idx, test_idx)``: sorted int64 arrays of row ids, disjoint, covering
        ``0..N-1``.

    Raises:
        ValueError: If the fractions are out of range or the labels are not integers.
    """
    _check_fracs(val_frac, test_frac)
    y = as_label_array(labels)
    idx = np.arange(y.size, dtype=np.int64)
    try:
        rest, test = _split_off(idx, y, test_frac, seed)
        val_rel = val_frac / (1.0 - test_frac)
        train, val = _split_off(rest, y, val_rel, seed)
    except ValueError as err:
        logger.warning(
            "stratified split with scikit-learn failed (%s); using a per-class split that keeps "
            "at least one sample of each class in train",
            err,
        )
        return _per_class_split(y, val_frac, test_frac, seed)
    return train.astype(np.int64), val.astype(np.int64), test.astype(np.int64)


def _group_split_off(
    idx: np.ndarray, labels: np.ndarray, groups: np.ndarray, frac: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Holds out about ``frac`` of ``idx`` as whole groups, stratified by label."""
    if frac <= 0.0 or idx.size == 0:
        return idx, np.zeros(0, dtype=np.int64)
    n_groups = np.unique(groups[idx]).size
    n_splits = min(max(2, int(round(1.0 / frac))), n_groups)
    if n_splits < 2:
        raise ValueError(
            f"cannot hold out {frac:.0%} of the rows by group: only {n_groups} group(s) left"
        )
    cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    rest, held = next(cv.split(idx, labels[idx], groups[idx]))
    return np.sort(idx[rest]), np.sort(idx[held])


def grouped_split_indices(
    labels: Any,
    groups: Any,
    *,
    seed: int = 0,
    val_frac: float = 0.15,
    test_frac: float = 0.2,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Like :func:`stratified_split_indices`, but rows of one group stay in one split.

    For crops of detection boxes the group is the image: crops of one image (its
    background, its neighbouring objects) never end up on both sides of a split. Held-out
    parts are whole groups picked by scikit-learn's ``StratifiedGroupKFold`` (one fold of
    ``round(1 / frac)``), so their sizes are close to, not exactly, the fractions.

    Args:
        labels: Integer labels, shape (N,).
        groups: Group of each row (any hashable values), shape (N,).
        seed: Random seed; the same seed gives the same split.
        val_frac: About this fraction of all rows for validation, in [0, 1).
        test_frac: About this fraction of all rows for test, in [0, 1).

    Returns:
        ``(train_idx, val_idx, test_idx)``: sorted int64 arrays of row ids, disjoint, covering
        ``0..N-1``, no group in two of them.

    Raises:
        ValueError: If the fractions are out of range, the lengths differ, or there are too
            few groups to hold any out.
    """
    _check_fracs(val_frac, test_frac)
    y = as_label_array(labels)
    _, g = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    if g.size != y.size:
        raise ValueError(f"groups must have one entry per row ({y.size}), got {g.size}")
    idx = np.arange(y.size, dtype=np.int64)
    rest, test = _group_split_off(idx, y, g, test_frac, seed)
    val_rel = val_frac / (1.0 - test_frac)
    train, val = _group_split_off(rest, y, g, val_rel, seed)
    return train, val, test


def split_dataset(full: Any, *, seed: int, val_frac: float, test_frac: float) -> dict[str, Any]:
    """``{"train", "val", "test"}`` subsets of ``full`` by :func:`stratified_split_indices`."""
    tr, va, te = stratified_split_indices(
        full.labels, seed=seed, val_frac=val_frac, test_frac=test_frac
    )
    return {"train": full.subset(tr), "val": full.subset(va), "test": full.subset(te)}
