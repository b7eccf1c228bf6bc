"""Stratified, seeded fold assignment: ``fold[index] in [0, K)``."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedKFold

from dcloop.validation import check_labels


def check_num_folds(labels: np.ndarray, num_folds: int) -> None:
    """Raise ``ValueError`` unless ``2 <= num_folds <= smallest class count``.

    Every fold must hold at least one sample of every class, otherwise the
    out-of-fold replica of that fold never sees the class.
    """
    if not isinstance(num_folds, (int, np.integer)) or isinstance(num_folds, bool):
        raise ValueError(f"num_folds must be an integer >= 2; got {num_folds!r}")
    if num_folds < 2:
        raise ValueError(f"num_folds must be >= 2 for out-of-fold predictions; got {num_folds}")
    counts = np.bincount(labels)
    present = counts[counts > 0]
    smallest = int(present.min())
    if num_folds > smallest:
        cls = int(np.flatnonzero(counts == smallest)[0])
        raise ValueError(
            f"num_folds={num_folds} is larger than the smallest class (class {cls} has "
            f"{smallest} samples): every fold needs every class. Use num_folds <= {smallest}."
        )


def assign_folds(labels, num_folds: int, *, seed: int = 0) -> np.ndarray:
    """Assign each sample to one of ``num_folds`` folds, stratified by label.

    Args:
        labels: ``(N,)`` integer class labels (the given, possibly noisy labels).
        num_folds: K, the number of folds (and fold replicas).
        seed: seed of the shuffle; the same seed gives the same folds.

    Returns:
        ``(N,)`` int64 array with ``fold[i] in [0, K)``; folds are disjoint by
        construction and each holds about ``N / K`` samples of every class.

    Example:
        >>> assign_folds([0, 0, 1, 1], 2, seed=0).tolist()  # doctest: +SKIP
        [1, 0, 0, 1]
    """
    labels = check_labels(labels)
    check_num_folds(labels, num_folds)
    folds = np.empty(len(labels), dtype=np.int64)
    skf = StratifiedKFold(n_splits=int(num_folds), shuffle=True, random_state=seed)
    for k, (_, held_out) in enumerate(skf.split(np.zeros(len(labels)), labels)):
        folds[held_out] = k
    return folds
