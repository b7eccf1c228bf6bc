import numpy as np
import pytest

from dcloop.folds import assign_folds


def test_folds_stratified_disjoint_seeded():
    labels = np.repeat(np.arange(4), [50, 30, 20, 10])
    folds = assign_folds(labels, 5, seed=3)
    assert folds.shape == labels.shape and set(folds.tolist()) == set(range(5))
    # every fold holds every class in proportion (+-1 sample)
    for c, n in zip(range(4), [50, 30, 20, 10], strict=True):
        counts = np.bincount(folds[labels == c], minlength=5)
        assert counts.max() - counts.min() <= 1 and counts.sum() == n
    # one fold in [0, K) per sample, and the folds are near-equal in size
    assert folds.min() == 0 and folds.max() == 4 and np.ptp(np.bincount(folds)) <= 4
    np.testing.assert_array_equal(folds, assign_folds(labels, 5, seed=3))
    assert not np.array_equal(folds, assign_folds(labels, 5, seed=4))


@pytest.mark.parametrize(
    "k, msg", [(1, ">= 2"), (11, "class 1 has 10: use at most 10 folds"), (2.5, "integer")]
)
def test_bad_num_folds(k, msg):
    labels = np.repeat(np.arange(3), [20, 10, 15])
    with pytest.raises(ValueError, match=msg):
        assign_folds(labels, k)


def test_bad_labels():
    with pytest.raises(ValueError, match=r"labels must be in \[0"):
        assign_folds(np.array([0, 1, -1, 1, 0, 1]), 2)
