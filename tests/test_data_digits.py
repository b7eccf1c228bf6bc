"""Tests for the embedded digits data and the stratified split."""

import numpy as np
import pytest
import torch

from dcloop.data import load_digits_splits, stratified_split_indices
from dcloop.data.digits import load_digits_full


@pytest.fixture(scope="module")
def splits():
    return load_digits_splits(seed=0)


def test_split_sizes_cover_all_rows(splits):
    sizes = {k: len(v) for k, v in splits.items()}
    assert sum(sizes.values()) == 1797
    assert sizes["test"] == 360  # ceil(0.2 * 1797)
    assert abs(sizes["val"] - round(0.15 * 1797)) <= 1
    rows = [int(s.split(":")[1]) for ds in splits.values() for s in ds.sources]
    assert sorted(rows) == list(range(1797))


def test_splits_are_stratified(splits):
    full = np.bincount(load_digits_full().labels, minlength=10) / 1797
    for ds in splits.values():
        frac = np.bincount(ds.labels, minlength=10) / len(ds)
        assert np.abs(frac - full).max() < 0.02


def test_split_is_deterministic_by_seed(splits):
    again = load_digits_splits(seed=0)
    other = load_digits_splits(seed=1)
    assert again["train"].sources == splits["train"].sources
    assert other["train"].sources != splits["train"].sources


def test_items_shape_range_and_index(splits):
    ds = splits["train"]
    full = load_digits_full()
    for i in (0, 5, len(ds) - 1):
        x, y, idx = ds[i]
        assert x.shape == (1, 8, 8) and x.dtype == torch.float32
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
        assert idx == i and isinstance(idx, int) and isinstance(y, int)
        assert y == int(ds.labels[i])
        row = int(ds.source(i).split(":")[1])
        assert torch.equal(x, full[row][0]) and y == int(full.labels[row])
    assert float(full.x.max()) == 1.0
    assert ds.num_classes == 10


def test_bad_fractions_raise():
    with pytest.raises(ValueError, match="val_frac"):
        load_digits_splits(val_frac=-0.1)
    with pytest.raises(ValueError, match="< 1"):
        load_digits_splits(val_frac=0.5, test_frac=0.5)


def test_tiny_data_falls_back_but_keeps_every_class_in_train():
    labels = np.array([0, 0, 1, 1, 1, 2])  # class 2 has a single sample
    tr, va, te = stratified_split_indices(labels, seed=0, val_frac=0.2, test_frac=0.2)
    assert sorted(np.concatenate([tr, va, te]).tolist()) == list(range(6))
    assert set(labels[tr]) == {0, 1, 2}
