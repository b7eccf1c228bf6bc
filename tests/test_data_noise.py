"""Tests for label-noise injection."""

import logging

import numpy as np
import pandas as pd
import pytest

from dcloop.data import NOISE_KINDS, empirical_noise_matrix, inject_noise, save_noise

C = 5
COUNTS = [40, 33, 27, 20, 11]


@pytest.fixture
def labels():
    y = np.repeat(np.arange(C), COUNTS)
    return np.random.default_rng(0).permutation(y)


@pytest.mark.parametrize("kind", ["symmetric", "asymmetric"])
def test_exact_per_class_flip_counts(labels, kind):
    r = inject_noise(labels, kind=kind, rate=0.3, num_classes=C, seed=0)
    for c, n in enumerate(COUNTS):
        flipped = int(r.is_noisy[r.true_labels == c].sum())
        assert flipped == round(0.3 * n)
    assert np.array_equal(r.true_labels, labels)
    assert np.array_equal(r.is_noisy, r.given_labels != r.true_labels)
    assert r.given_labels.dtype == np.int64 and r.is_noisy.dtype == bool


def test_symmetric_never_flips_to_self_and_reaches_other_classes(labels):
    r = inject_noise(labels, kind="symmetric", rate=0.5, num_classes=C, seed=1)
    noisy = r.is_noisy
    assert np.all(r.given_labels[noisy] != r.true_labels[noisy])
    assert len(set(r.given_labels[noisy & (r.true_labels == 0)])) > 1


def test_asymmetric_flips_to_next_class(labels):
    r = inject_noise(labels, kind="asymmetric", rate=0.2, num_classes=C, seed=0)
    noisy = r.is_noisy
    assert np.all(r.given_labels[noisy] == (r.true_labels[noisy] + 1) % C)


def test_asymmetric_high_rate_warns(labels, caplog):
    with caplog.at_level(logging.WARNING, logger="dcloop.data.noise"):
        inject_noise(labels, kind="asymmetric", rate=0.6, num_classes=C, seed=0)
    assert "majority" in caplog.text


@pytest.mark.parametrize("kind", ["symmetric", "asymmetric", "random_matrix"])
def test_seeded_determinism(labels, kind):
    a = inject_noise(labels, kind=kind, rate=0.3, num_classes=C, seed=4)
    b = inject_noise(labels, kind=kind, rate=0.3, num_classes=C, seed=4)
    c = inject_noise(labels, kind=kind, rate=0.3, num_classes=C, seed=5)
    assert np.array_equal(a.given_labels, b.given_labels)
    assert not np.array_equal(a.given_labels, c.given_labels)


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_noise_matrix_columns_sum_to_one_and_match_empirical(labels, kind):
    r = inject_noise(labels, kind=kind, rate=0.3, num_classes=C, seed=2, sparsity=0.4)
    assert r.noise_matrix.shape == (C, C)
    np.testing.assert_allclose(r.noise_matrix.sum(axis=0), 1.0)
    for j in range(C):
        members = r.true_labels == j
        for i in range(C):
            expected = np.mean(r.given_labels[members] == i)
            assert r.noise_matrix[i, j] == pytest.approx(expected)
    if kind == "none":
        assert not r.is_noisy.any() and np.array_equal(r.noise_matrix, np.eye(C))


def test_random_matrix_uses_cleanlab_matrix_and_sparsity():
    y = np.repeat(np.arange(10), 200)
    dense = inject_noise(y, kind="random_matrix", rate=0.4, num_classes=10, seed=0)
    sparse = inject_noise(y, kind="random_matrix", rate=0.4, num_classes=10, seed=0, sparsity=0.8)
    for r in (dense, sparse):
        t = r.target_noise_matrix
        np.testing.assert_allclose(t.sum(axis=0), 1.0)
        assert np.trace(t) == pytest.approx(10 * 0.6)
        assert abs(r.actual_rate - 0.4) < 0.03
    off = ~np.eye(10, dtype=bool)
    assert (sparse.target_noise_matrix[off] == 0).mean() >= 0.8
    assert (dense.target_noise_matrix[off] == 0).mean() < 0.2
    assert (sparse.noise_matrix[off] == 0).sum() > (dense.noise_matrix[off] == 0).sum()


def test_random_matrix_keeps_global_numpy_rng(labels):
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    inject_noise(labels, kind="random_matrix", rate=0.3, num_classes=C, seed=0)
    assert np.random.rand() == expected


def test_input_labels_not_modified(labels):
    before = labels.copy()
    inject_noise(labels, kind="symmetric", rate=0.4, num_classes=C, seed=0)
    assert np.array_equal(labels, before)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kind": "flip"}, "none.*symmetric.*asymmetric.*random_matrix"),
        ({"rate": 1.0}, r"\[0, 1\)"),
        ({"rate": -0.1}, r"\[0, 1\)"),
        ({"sparsity": 1.5}, "sparsity"),
        ({"num_classes": 3}, r"\[0, 3\)"),
        ({"kind": "random_matrix", "rate": 0.9}, "trace"),
    ],
)
def test_bad_arguments(labels, kwargs, match):
    args = {"kind": "symmetric", "rate": 0.2, "num_classes": C, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        inject_noise(labels, **args)


def test_empirical_noise_matrix_identity_for_missing_class():
    m = empirical_noise_matrix([0, 1, 0], [0, 0, 0], 3)
    np.testing.assert_allclose(m[:, 0], [2 / 3, 1 / 3, 0])
    np.testing.assert_allclose(m[:, 1:], np.eye(3)[:, 1:])


def test_save_noise_writes_files(labels, tmp_path):
    r = inject_noise(labels, kind="symmetric", rate=0.2, num_classes=C, seed=0)
    sources = [f"s{i}" for i in range(len(labels))]
    save_noise(r, tmp_path / "out", sources=sources)
    df = pd.read_csv(tmp_path / "out" / "labels.csv")
    assert list(df.columns) == ["index", "given_label", "true_label", "is_noisy", "source"]
    assert np.array_equal(df["given_label"], r.given_labels)
    assert np.array_equal(df["true_label"], r.true_labels)
    assert np.array_equal(df["is_noisy"], r.is_noisy)
    assert df["source"].tolist() == sources
    m = pd.read_csv(tmp_path / "out" / "noise_matrix_true.csv", index_col=0).to_numpy()
    np.testing.assert_allclose(m, r.noise_matrix)
    with pytest.raises(ValueError, match="sources"):
        save_noise(r, tmp_path, sources=["a"])


def test_mapping_flips_only_the_mapped_classes_to_their_targets():
    from dcloop.data.noise import inject_noise

    labels = np.repeat(np.arange(4), 50)
    res = inject_noise(
        labels, kind="asymmetric", rate=0.3, num_classes=4, seed=0, mapping={3: 1, 0: 2}
    )
    assert res.num_noisy == 30
    assert set(res.given_labels[res.is_noisy & (labels == 3)]) == {1}
    assert set(res.given_labels[res.is_noisy & (labels == 0)]) == {2}
    assert not res.is_noisy[(labels == 1) | (labels == 2)].any()
    cyclic = inject_noise(labels, kind="asymmetric", rate=0.3, num_classes=4, seed=0)
    assert set(cyclic.given_labels[cyclic.is_noisy & (labels == 3)]) == {0}  # c -> c+1 kept
    with pytest.raises(ValueError, match=r"noise mapping 1: 1 must map"):
        inject_noise(labels, kind="asymmetric", rate=0.3, num_classes=4, seed=0, mapping={1: 1})
    with pytest.raises(ValueError, match="a noise mapping is for kind='asymmetric'"):
        inject_noise(labels, kind="symmetric", rate=0.3, num_classes=4, seed=0, mapping={0: 1})


def test_labels_csv_neutralises_formula_sources(tmp_path):
    from dcloop.csvsafe import read_csv

    res = inject_noise(np.array([0, 1]), kind="none", rate=0.0, num_classes=2, seed=0)
    save_noise(res, tmp_path, sources=["=HYPERLINK(1)", "ok.png"])
    raw = (tmp_path / "labels.csv").read_text()
    assert "'=HYPERLINK(1)" in raw and "\n0,0,0,False,=" not in raw
    assert read_csv(tmp_path / "labels.csv")["source"].tolist() == ["=HYPERLINK(1)", "ok.png"]
