"""dcloop.cl as a drop-in for cleanlab 2.9: every keyword of its namesakes, same results.

Each option is compared with cleanlab itself on random inputs and on the real label-errors
sets (skipped when absent); multi-label on random lists of labels and on a multi-label problem
built from the real CIFAR-10 probabilities. ``ties="cleanlab"`` gives cleanlab's own order among
tied scores, so masks and rankings are compared exactly.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import cleanlab.count
import cleanlab.filter
import cleanlab.rank
import numpy as np
import pytest
import torch

import dcloop.cl as dc

DATA = Path(os.environ.get("DCLOOP_LABEL_ERRORS", "/work/shared/data/label-errors"))
PRUNE = ("prune_by_noise_rate", "prune_by_class", "both")
RANKS = (None, "self_confidence", "normalized_margin", "confidence_weighted_entropy")


def noisy_problem(n=400, k=5, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    true = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 2.5 * np.eye(k)[true]
    probs = np.exp(logits)
    probs /= probs.sum(1, keepdims=True)
    labels = np.where(rng.random(n) < 0.2, rng.integers(0, k, n), true)
    return labels.astype(np.int64), probs.astype(dtype)


def cl_find(labels, probs, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cleanlab.filter.find_label_issues(labels, probs, n_jobs=1, **kw)


def dc_find(labels, probs, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dc.find_label_issues(labels, probs, ties="cleanlab", **kw)


def multilabel_problem(n=300, k=6, seed=0):
    rng = np.random.default_rng(seed)
    truth = rng.random((n, k)) < 0.3
    probs = np.clip(truth * 0.7 + rng.normal(0.15, 0.2, (n, k)), 0, 1)
    noisy = truth ^ (rng.random((n, k)) < 0.08)
    return [np.flatnonzero(row).tolist() for row in noisy], probs


def real(name):
    probs = np.load(DATA / f"{name}_pred_probs.npy").astype(np.float64)
    probs /= probs.sum(1, keepdims=True)
    return np.load(DATA / f"{name}_given_labels.npy").astype(np.int64), probs


needs_data = pytest.mark.skipif(not DATA.exists(), reason="label-errors data not available")


# ------------------------------------------------------------------------------ single-label


@pytest.mark.parametrize("filter_by", ["low_self_confidence", "low_normalized_margin"])
@pytest.mark.parametrize("rank_by", RANKS)
def test_low_filters_match_cleanlab(filter_by, rank_by):
    labels, probs = noisy_problem()
    ref = cl_find(labels, probs, filter_by=filter_by, return_indices_ranked_by=rank_by)
    ours = dc_find(labels, probs, filter_by=filter_by, return_indices_ranked_by=rank_by)
    np.testing.assert_array_equal(ours, ref)
    assert ours.sum() if rank_by is None else len(ours)  # it flags something


@pytest.mark.parametrize("filter_by", PRUNE)
def test_precomputed_confident_joint_drives_pruning(filter_by):
    labels, probs = noisy_problem(seed=1)
    raw = cleanlab.count.compute_confident_joint(labels, probs, calibrate=False)
    for cj in (raw, raw.T.copy(), np.ones_like(raw) * 7):
        ref = cl_find(labels, probs, filter_by=filter_by, confident_joint=cj)
        np.testing.assert_array_equal(dc_find(labels, probs, filter_by=filter_by,
                                              confident_joint=cj), ref)  # fmt: skip
        tensor = dc.find_label_issues(
            torch.from_numpy(labels), torch.from_numpy(probs), filter_by=filter_by,
            confident_joint=torch.from_numpy(cj), ties="cleanlab",
        )  # fmt: skip
        np.testing.assert_array_equal(tensor.numpy(), ref)
    plain = dc_find(labels, probs, filter_by=filter_by)
    assert not np.array_equal(dc_find(labels, probs, filter_by=filter_by,
                                      confident_joint=np.ones_like(raw) * 7), plain)  # fmt: skip


def test_confident_joint_is_ignored_with_a_warning_by_confident_learning():
    labels, probs = noisy_problem()
    cj = np.ones((5, 5), np.int64)
    with pytest.warns(UserWarning, match="ignored"):
        ours = dc.find_label_issues(
            labels, probs, filter_by="confident_learning", confident_joint=cj
        )
    np.testing.assert_array_equal(ours, cl_find(labels, probs, filter_by="confident_learning"))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_thresholds_and_off_diagonal_indices_match_cleanlab(dtype):
    labels, probs = noisy_problem(dtype=dtype)
    rng = np.random.default_rng(3)
    for thresholds in (None, rng.uniform(0.2, 0.8, 5), [0.5] * 5):
        for calibrate in (True, False):
            ref_cj, ref_idx = cleanlab.count.compute_confident_joint(
                labels, probs, thresholds=thresholds, calibrate=calibrate,
                return_indices_of_off_diagonals=True,
            )  # fmt: skip
            cj, idx = dc.compute_confident_joint(
                labels, probs, thresholds=thresholds, calibrate=calibrate,
                return_indices_of_off_diagonals=True,
            )  # fmt: skip
            np.testing.assert_array_equal(cj, ref_cj)
            np.testing.assert_array_equal(idx, ref_idx)
    _, t_idx = dc.compute_confident_joint(  # the last thresholds of the loop
        torch.from_numpy(labels), torch.from_numpy(probs), thresholds=torch.full((5,), 0.5),
        return_indices_of_off_diagonals=True,
    )  # fmt: skip
    np.testing.assert_array_equal(t_idx.numpy(), ref_idx)
    with pytest.raises(ValueError, match=r"thresholds must be a numeric array of shape \(5,\)"):
        dc.compute_confident_joint(labels, probs, thresholds=[0.5, 0.5])


@pytest.mark.parametrize("filter_by", PRUNE)
def test_num_to_remove_per_class_as_cleanlab_takes_it(filter_by):
    labels, probs = noisy_problem(seed=2)
    for remove in (5, [1, 2, 3, 4, 5], np.array([0, 3, 0, 3, 0]), (2.0, 2.0, 2.0, 2.0, 2.0)):
        ref = cl_find(labels, probs, filter_by=filter_by, num_to_remove_per_class=remove)
        np.testing.assert_array_equal(
            dc_find(labels, probs, filter_by=filter_by, num_to_remove_per_class=remove), ref
        )
    flagged = dc_find(labels, probs, filter_by="prune_by_class", num_to_remove_per_class=5)
    assert (np.bincount(labels[flagged], minlength=5) == 5).all()


def test_n_jobs_and_verbose_are_accepted(caplog):
    labels, probs = noisy_problem()
    ref = dc.find_label_issues(labels, probs)
    for n_jobs in (None, 1, 4):
        np.testing.assert_array_equal(dc.find_label_issues(labels, probs, n_jobs=n_jobs), ref)
    with caplog.at_level(logging.INFO, logger="dcloop.cl"):
        dc.find_label_issues(labels, probs, verbose=True)
    assert f"number of label issues found: {ref.sum()}" in caplog.text
    with pytest.raises(ValueError, match="n_jobs must be an integer >= 1"):
        dc.find_label_issues(labels, probs, n_jobs=0)


def test_estimate_joint_from_a_given_confident_joint():
    labels, probs = noisy_problem()
    cj = cleanlab.count.compute_confident_joint(labels, probs, calibrate=False)
    for lab in (labels, None):
        np.testing.assert_array_equal(
            dc.estimate_joint(lab, probs, confident_joint=cj),
            cleanlab.count.estimate_joint(lab, probs, confident_joint=cj),
        )
    joint = dc.estimate_joint(labels, torch.from_numpy(probs), confident_joint=cj)
    assert isinstance(joint, torch.Tensor)


def test_estimate_noise_matrices_options_and_the_cross_validation_error():
    labels, probs = noisy_problem()
    for converge in (True, False):
        for thresholds in (None, [0.4] * 5):
            _, nm, inv, _ = cleanlab.count.estimate_py_and_noise_matrices_from_probabilities(
                labels, probs, thresholds=thresholds, converge_latent_estimates=converge
            )
            ours = dc.estimate_noise_matrices(
                labels, probs, thresholds=thresholds, converge_latent_estimates=converge
            )
            np.testing.assert_array_equal(ours[0], nm)
            np.testing.assert_array_equal(ours[1], inv)
    x = np.random.default_rng(0).normal(size=(len(labels), 3))
    for call in (
        lambda: dc.estimate_noise_matrices(X=x, labels=labels),
        lambda: dc.estimate_noise_matrices(labels, probs, clf=object()),
        lambda: dc.estimate_noise_matrices(x, labels),  # cleanlab's positional (X, labels)
        lambda: dc.estimate_noise_matrices(x, labels, object()),  # (X, labels, clf)
    ):
        with pytest.raises(ValueError, match="OOFCollector") as err:
            call()
        assert len(str(err.value).splitlines()) == 1


def test_unknown_keyword_cleanlab_does_not_take_still_fails():
    labels, probs = noisy_problem()
    with pytest.raises(TypeError):
        dc.find_label_issues(labels, probs, low_memory=True)  # not a keyword of cleanlab's


# ------------------------------------------------------------------------------- multi-label


@pytest.mark.parametrize(
    "filter_by", [*PRUNE, "confident_learning", "predicted_neq_given", "low_self_confidence",
                  "low_normalized_margin"],
)  # fmt: skip
def test_multilabel_matches_cleanlab(filter_by):
    labels, probs = multilabel_problem()
    for rank_by in RANKS:
        for kwargs in ({}, {"rank_by_kwargs": {"adjust_pred_probs": True}}):
            if kwargs and rank_by in (None, "confidence_weighted_entropy"):
                continue
            kw = dict(filter_by=filter_by, return_indices_ranked_by=rank_by, multi_label=True)
            ref = cl_find(labels, probs, **kw, **kwargs)
            np.testing.assert_array_equal(dc_find(labels, probs, **kw, **kwargs), ref)


def test_multilabel_options_match_cleanlab():
    labels, probs = multilabel_problem(seed=1)
    cj = cleanlab.count.compute_confident_joint(labels, probs, multi_label=True, calibrate=False)
    for kw in (
        {"confident_joint": cj},
        {"confident_joint": cj[::-1].copy()},
        {"num_to_remove_per_class": [3, 1, 4, 1, 5, 9]},
        {"frac_noise": 0.5, "min_examples_per_class": 20},
        {"filter_by": "both", "return_indices_ranked_by": "normalized_margin"},
    ):
        ref = cl_find(labels, probs, multi_label=True, **kw)
        np.testing.assert_array_equal(dc_find(labels, probs, multi_label=True, **kw), ref)
    with pytest.warns(UserWarning, match=r"\(num_classes, 2, 2\)"):  # K x K: ignored, as cleanlab
        ours = dc.find_label_issues(labels, probs, multi_label=True, confident_joint=np.eye(6))
    np.testing.assert_array_equal(ours, cl_find(labels, probs, multi_label=True))
    with pytest.raises(ValueError, match=r"shape \(6, 2, 2\)"):
        dc.find_label_issues(labels, probs, multi_label=True, confident_joint=np.ones((6, 3, 3)))


def test_multilabel_deprecation_warning_and_label_format_errors():
    labels, probs = multilabel_problem()
    with pytest.warns(DeprecationWarning, match="multi_label"):
        dc.find_label_issues(labels, probs, multi_label=True)
    with pytest.raises(TypeError, match="list of N lists"):
        dc.find_label_issues(np.zeros(len(labels), int), probs, multi_label=True)
    with pytest.raises(ValueError, match=r"must be in \[0, 1\] with multi_label.*max=1\.5"):
        dc.find_label_issues(labels, probs * 1.5, multi_label=True)
    bad = [*labels[:-1], [7]]
    with pytest.raises(ValueError, match=r"multi-labels must be in \[0, 6\); got min=0, max=7"):
        dc.find_label_issues(bad, probs, multi_label=True)


def test_multilabel_counts_match_cleanlab():
    labels, probs = multilabel_problem(seed=2)
    for calibrate in (True, False):
        ref, ref_idx = cleanlab.count.compute_confident_joint(
            labels, probs, multi_label=True, calibrate=calibrate,
            return_indices_of_off_diagonals=True,
        )  # fmt: skip
        cj, idx = dc.compute_confident_joint(
            labels, probs, multi_label=True, calibrate=calibrate,
            return_indices_of_off_diagonals=True,
        )  # fmt: skip
        np.testing.assert_array_equal(cj, ref)
        assert cj.shape == (6, 2, 2)
        for a, b in zip(idx, ref_idx, strict=True):
            np.testing.assert_array_equal(a, b)
    thr = np.array([0.3, 0.6])
    np.testing.assert_array_equal(
        dc.compute_confident_joint(labels, probs, multi_label=True, thresholds=thr),
        cleanlab.count.compute_confident_joint(labels, probs, multi_label=True, thresholds=thr),
    )
    for given in (None, ref):
        np.testing.assert_array_equal(
            dc.estimate_joint(labels, probs, confident_joint=given, multi_label=True),
            cleanlab.count.estimate_joint(labels, probs, confident_joint=given, multi_label=True),
        )


def test_multilabel_torch_in_torch_out():
    labels, probs = multilabel_problem()
    mask = dc.find_label_issues(labels, torch.from_numpy(probs), multi_label=True)
    assert isinstance(mask, torch.Tensor) and mask.dtype == torch.bool
    np.testing.assert_array_equal(mask.numpy(), cl_find(labels, probs, multi_label=True))
    half = dc.find_label_issues(labels, torch.from_numpy(probs).half(), multi_label=True)
    upcast = torch.from_numpy(probs).half().float().numpy()
    np.testing.assert_array_equal(half.numpy(), cl_find(labels, upcast, multi_label=True))


# ------------------------------------------------------------------------------- real inputs


@needs_data
@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_real_sets_every_new_option(name):
    labels, probs = real(name)
    for filter_by in ("low_self_confidence", "low_normalized_margin"):
        ref = cl_find(
            labels, probs, filter_by=filter_by, return_indices_ranked_by="self_confidence"
        )
        ours = dc_find(
            labels, probs, filter_by=filter_by, return_indices_ranked_by="self_confidence"
        )
        np.testing.assert_array_equal(ours, ref)
    cj = cleanlab.count.compute_confident_joint(labels, probs, calibrate=False)
    k = probs.shape[1]
    for kw in ({"confident_joint": cj}, {"num_to_remove_per_class": 3},
               {"num_to_remove_per_class": list(range(k))}):  # fmt: skip
        np.testing.assert_array_equal(dc_find(labels, probs, **kw), cl_find(labels, probs, **kw))
    thr = np.full(k, 0.5)
    ref_cj, ref_idx = cleanlab.count.compute_confident_joint(
        labels, probs, thresholds=thr, return_indices_of_off_diagonals=True
    )
    cj2, idx = dc.compute_confident_joint(
        labels, probs, thresholds=thr, return_indices_of_off_diagonals=True
    )
    np.testing.assert_array_equal(cj2, ref_cj)
    np.testing.assert_array_equal(idx, ref_idx)


@needs_data
def test_real_cifar10_one_vs_rest_multilabel():
    """CIFAR-10's softmax read one-vs-rest: each row labelled with its given class, plus the
    model's second choice where that has probability > 0.2 (a second object in the picture)."""
    labels, probs = real("cifar10")
    probs, labels = probs[:2500], labels[:2500]
    second = np.argsort(-probs, axis=1)[:, 1]
    ml = [
        [int(y)] + ([int(s)] if p[s] > 0.2 and s != y else [])
        for y, s, p in zip(labels, second, probs, strict=True)
    ]
    assert sum(len(row) > 1 for row in ml) > 50
    for filter_by in ("prune_by_noise_rate", "both", "low_self_confidence"):
        for rank_by in (None, "self_confidence"):
            kw = dict(filter_by=filter_by, return_indices_ranked_by=rank_by, multi_label=True)
            ref = cl_find(ml, probs, **kw)
            np.testing.assert_array_equal(dc_find(ml, probs, **kw), ref)
    np.testing.assert_array_equal(
        dc.compute_confident_joint(ml, probs, multi_label=True),
        cleanlab.count.compute_confident_joint(ml, probs, multi_label=True),
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_binary_engine_equals_the_general_engine_default_ties(seed):
    """The vectorised per-class engine of multi_label gives what the general engine gives on
    each class's (N, 2) problem, with the default tie rule too (probabilities clipped to 0 and
    1 tie)."""
    from dcloop.cl import _binary

    labels, probs = multilabel_problem(seed=seed)
    y_one = np.zeros(probs.shape, bool)
    for i, row in enumerate(labels):
        y_one[i, row] = True
    for c in range(probs.shape[1]):
        y, p = y_one[:, c], probs[:, c]
        binary = np.vstack((1 - p, p)).T
        s = _binary.scan(p, y)
        for fb in dc.FILTER_BY:
            for kw in ({}, {"frac_noise": 0.6}, {"min_examples_per_class": 250}):
                if kw and fb not in PRUNE:
                    continue
                np.testing.assert_array_equal(
                    _binary.mask(s, filter_by=fb, **kw),
                    dc.find_label_issues(y.astype(int), binary, filter_by=fb, **kw),
                    err_msg=f"class {c} {fb} {kw}",
                )


def test_verdict_and_the_cleanlab_backend_take_the_new_options():
    labels, probs = noisy_problem()
    for fb in ("low_self_confidence", "low_normalized_margin"):
        np.testing.assert_array_equal(
            dc.verdict(labels, probs, filter_by=fb).flags.numpy(),
            dc.find_label_issues(labels, probs, filter_by=fb),
        )
    ml, ml_probs = multilabel_problem()
    with pytest.warns(DeprecationWarning):
        via_cleanlab = dc.find_label_issues(ml, ml_probs, multi_label=True, backend="cleanlab")
    np.testing.assert_array_equal(via_cleanlab, cl_find(ml, ml_probs, multi_label=True))
    cj = cleanlab.count.compute_confident_joint(labels, probs, calibrate=False)
    np.testing.assert_array_equal(
        dc.find_label_issues(labels, probs, confident_joint=cj, backend="cleanlab"),
        cl_find(labels, probs, confident_joint=cj),
    )
