import numpy as np
import pytest

from dcloop.data.splits import grouped_split_indices


def test_grouped_split_covers_every_row_once_and_never_splits_a_group():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 600)
    groups = rng.integers(0, 150, 600)  # uneven group sizes
    tr, va, te = grouped_split_indices(labels, groups, seed=3, val_frac=0.15, test_frac=0.2)
    assert np.array_equal(np.sort(np.concatenate([tr, va, te])), np.arange(600))
    g = [set(groups[p].tolist()) for p in (tr, va, te)]
    assert not (g[0] & g[1]) and not (g[0] & g[2]) and not (g[1] & g[2])
    assert 0.1 < te.size / 600 < 0.3 and 0.08 < va.size / 600 < 0.25
    assert set(labels[te].tolist()) == {0, 1, 2, 3}  # stratified: every class held out
    again = grouped_split_indices(labels, groups, seed=3, val_frac=0.15, test_frac=0.2)
    assert all(np.array_equal(a, b) for a, b in zip((tr, va, te), again, strict=True))


def test_grouped_split_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"one entry per row \(4\), got 3"):
        grouped_split_indices([0, 1, 0, 1], ["a", "b", "c"])
    with pytest.raises(ValueError, match="only 1 group"):
        grouped_split_indices([0, 1, 0, 1], ["a"] * 4)
