"""The embedded default data: scikit-learn's 8x8 handwritten digits (no download needed)."""

from __future__ import annotations

import logging

import numpy as np
import torch
from sklearn.datasets import load_digits

from dcloop.data.datasets import IndexedTensorDataset
from dcloop.data.splits import split_dataset

logger = logging.getLogger(__name__)

#: Class names of the digits data, class ``k`` is the digit ``k``.
DIGITS_CLASS_NAMES: list[str] = [str(k) for k in range(10)]


def load_digits_full() -> IndexedTensorDataset:
    """Loads all 1,797 digits images as one dataset.

    Returns:
        An :class:`IndexedTensorDataset` with ``x`` float32 (1797, 1, 8, 8) in [0, 1]
        (pixel values 0..16 divided by 16), labels 0..9 and sources ``"digits:<row>"``.
    """
    bunch = load_digits()
    x = torch.from_numpy((bunch.images.astype(np.float32) / 16.0)[:, None, :, :].copy())
    labels = bunch.target.astype(np.int64)
    sources = [f"digits:{i}" for i in range(labels.shape[0])]
    return IndexedTensorDataset(
        x, labels, sources=sources, num_classes=10, class_names=DIGITS_CLASS_NAMES
    )


def load_digits_splits(
    *, seed: int = 0, val_frac: float = 0.15, test_frac: float = 0.2
) -> dict[str, IndexedTensorDataset]:
    """Stratified, seeded train/val/test splits of the digits data.

    ``test_frac`` of all rows go to test and ``val_frac`` of all rows to val (see
    :func:`dcloop.data.splits.stratified_split_indices`); the rest is train. Within each split
    the index runs ``0..n-1``; ``source(i)`` gives ``"digits:<original row id>"``.

    Args:
        seed: Random seed of the split.
        val_frac: Fraction of all rows for validation, in [0, 1).
        test_frac: Fraction of all rows for test, in [0, 1).

    Returns:
        ``{"train": ..., "val": ..., "test": ...}``; items ``(x (1, 8, 8) float32, y, index)``.

    Raises:
        ValueError: If the fractions are out of range.
    """
    return split_dataset(load_digits_full(), seed=seed, val_frac=val_frac, test_frac=test_frac)
