"""Stratified, seeded fold assignment: ``fold[index] in [0, K)``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import StratifiedKFold

from dcloop._checks import check_int, check_labels
from dcloop.errors import UserInputError


def check_num_folds(
    labels: np.ndarray, num_folds: int, *, class_names: Sequence[str] | None = None
) -> None:
    """Raise ``ValueError`` unless ``2 <= num_folds <= smallest class count``.

    Every fold must hold at least one sample of every class, otherwise the
    out-of-fold replica of that fold never sees the class.

    Args:
        labels: ``(N,)`` int64 given labels.
        num_folds: K.
        class_names: optional names of the classes, for the message.
    """
    num_folds = check_int("num_folds", num_folds, minimum=2, why="for out-of-fold predictions")
    counts = np.bincount(labels)
    present = counts[counts > 0]
    smallest = int(present.min())
    if num_folds > smallest:
        small = np.flatnonzero((counts > 0) & (counts < num_folds))
        cls = int(small[np.argmin(counts[small])])
        name = f"class {cls}"
        if class_names is not None and cls < len(class_names):
            name = f"class {str(class_names[cls])!r} (id {cls})"
        others = f", and {small.size - 1} more class(es) have fewer than {num_folds}"
        advice = (
            f"use at most {smallest} folds or add samples of it"
            if smallest >= 2
            else "add samples of it or leave the class out (K-fold training needs K >= 2)"
        )
        raise UserInputError(
            f"{num_folds} folds need at least {num_folds} samples of every class in the "
            f"training split (one per fold); {name} has {smallest}"
            f"{others if small.size > 1 else ''}: {advice}"
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
