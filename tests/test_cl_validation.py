"""Bad input to dcloop.cl gets a clear error; tolerated input is used as given."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import dcloop.cl as dc


def problem(n=200, k=4, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, k))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return rng.integers(0, k, n), p.astype(np.float32)


PUBLIC = [
    lambda y, p: dc.find_label_issues(y, p),
    lambda y, p: dc.get_label_quality_scores(y, p),
    lambda y, p: dc.compute_confident_joint(y, p),
    lambda y, p: dc.estimate_joint(y, p),
    lambda y, p: dc.estimate_noise_matrices(y, p),
]


@pytest.mark.parametrize("fn", PUBLIC)
def test_every_public_function_validates(fn):
    labels, probs = problem()
    labels[3] = 9
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\); got min=0, max=9"):
        fn(labels, probs)


def test_labels_out_of_range_message_shows_the_values():
    labels, probs = problem(k=10)
    labels[0], labels[1] = -1, 12
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\); got min=-1, max=12"):
        dc.find_label_issues(labels, probs)


@pytest.mark.parametrize(
    ("labels_shape", "probs_shape", "match"),
    [
        ((200,), (199, 4), "same length; got 200 labels and pred_probs of shape \\(199, 4\\)"),
        ((200, 1), (200, 4), "labels must have shape \\(N,\\); got shape \\(200, 1\\)"),
        ((200,), (200,), "pred_probs must have shape \\(N, K\\); got shape \\(200,\\)"),
        ((200,), (200, 1), "at least 2 columns"),
        ((0,), (0, 4), "at least one row"),
    ],
)
def test_shape_errors(labels_shape, probs_shape, match):
    labels = np.zeros(labels_shape, dtype=np.int64)
    probs = np.full(probs_shape, 1.0 / (probs_shape[-1] if len(probs_shape) > 1 else 1), np.float32)
    with pytest.raises(ValueError, match=match):
        dc.find_label_issues(labels, probs)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_probabilities(bad):
    labels, probs = problem()
    probs[57, 2] = bad
    with pytest.raises(
        ValueError, match=r"must be finite; got 1 row\(s\) with NaN or inf \(first: row 57\)"
    ):
        dc.find_label_issues(labels, probs, chunk_size=16)


def test_rows_that_do_not_sum_to_one():
    labels, probs = problem()
    probs[123] *= 0.9
    with pytest.raises(
        ValueError, match=r"rows must sum to 1.*first offending row 123 sums to 0\.9"
    ):
        dc.find_label_issues(labels, probs)


def test_probabilities_outside_unit_interval():
    labels, probs = problem()
    probs[5] = [1.25, -0.25, 0.0, 0.0]  # row still sums to 1
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]; got min=-0\.25, max=1\.25"):
        dc.find_label_issues(labels, probs)


def test_small_row_sum_error_is_tolerated_and_used_as_given():
    labels, probs = problem()
    probs = probs.astype(np.float64)
    probs[:10] *= 1 + 5e-4  # within the float64 tolerance (1e-3), like quantised outputs
    mask = dc.find_label_issues(labels, probs)
    assert mask.shape == (200,)
    with pytest.raises(ValueError, match="rows must sum to 1"):
        dc.find_label_issues(labels, probs * (1 + 2e-3))


def test_half_precision_tolerance_is_looser():
    labels, probs = problem()
    half = torch.from_numpy(probs * (1 + 5e-3)).to(torch.bfloat16)
    assert dc.find_label_issues(torch.from_numpy(labels), half).dtype == torch.bool
    with pytest.raises(ValueError, match="rows must sum to 1"):
        dc.find_label_issues(labels, probs * (1 + 5e-3))  # float32: 1e-3


def test_dtype_errors():
    labels, probs = problem()
    with pytest.raises(TypeError, match="labels must have an integer dtype; got float64"):
        dc.find_label_issues(labels.astype(np.float64), probs)
    with pytest.raises(
        TypeError, match="pred_probs must be float16, bfloat16, float32 or float64; got int64"
    ):
        dc.find_label_issues(labels, probs.astype(np.int64))


def test_label_dtypes_and_containers_are_accepted():
    labels, probs = problem()
    ref = dc.find_label_issues(labels, probs)
    np.testing.assert_array_equal(dc.find_label_issues(labels.astype(np.uint16), probs), ref)
    np.testing.assert_array_equal(dc.find_label_issues(labels.tolist(), probs), ref)
    np.testing.assert_array_equal(dc.find_label_issues(labels, np.asfortranarray(probs)), ref)
    mixed = dc.find_label_issues(labels, torch.from_numpy(probs))  # torch probs decide the output
    assert isinstance(mixed, torch.Tensor)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"filter_by": "low_confidence"}, "filter_by must be one of"),
        ({"return_indices_ranked_by": "margin"}, "return_indices_ranked_by must be one of"),
        ({"backend": "numpy"}, "backend must be one of \\['torch', 'cleanlab'\\]; got 'numpy'"),
        ({"ties": "random"}, "ties must be one of"),
        ({"frac_noise": 0.0}, "frac_noise must be a number in \\(0, 1\\]; got frac_noise=0.0"),
        (
            {"min_examples_per_class": -1},
            "min_examples_per_class must be an integer >= 0; got min_examples_per_class=-1",
        ),
        ({"chunk_size": 0}, "chunk_size must be an integer >= 1 .*or None.*; got chunk_size=0"),
        ({"num_to_remove_per_class": [1, 2]}, "one non-negative number or 4 of them"),
        ({"num_to_remove_per_class": -1}, "one non-negative number or 4 of them"),
        ({"n_jobs": 0}, "n_jobs must be an integer >= 1"),
        (
            {"filter_by": "confident_learning", "num_to_remove_per_class": [1, 1, 1, 1]},
            "not supported with filter_by='confident_learning'",
        ),
        ({"rank_by_kwargs": {"temperature": 2}}, "supports only 'adjust_pred_probs'"),
    ],
)
def test_option_errors(kwargs, match):
    labels, probs = problem()
    with pytest.raises(ValueError, match=match):
        dc.find_label_issues(labels, probs, **kwargs)


def test_options_are_keyword_only():
    labels, probs = problem()
    with pytest.raises(TypeError):
        dc.find_label_issues(labels, probs, "both")  # type: ignore[misc]


def test_score_method_errors():
    labels, probs = problem()
    with pytest.raises(ValueError, match="method must be one of"):
        dc.get_label_quality_scores(labels, probs, method="entropy")
    with pytest.raises(ValueError, match="not supported for confidence_weighted_entropy"):
        dc.get_label_quality_scores(
            labels, probs, method="confidence_weighted_entropy", adjust_pred_probs=True
        )


def test_cpu_thread_limit_is_restored():
    labels, probs = problem()
    before = torch.get_num_threads()
    dc.find_label_issues(labels, probs)
    with pytest.raises(ValueError):
        dc.compute_confident_joint(labels, probs * 2)
    assert torch.get_num_threads() == before


def test_inputs_that_require_grad_are_fine():
    labels, probs = problem()
    leaf = torch.from_numpy(probs).requires_grad_(True)
    mask = dc.find_label_issues(torch.from_numpy(labels), leaf)
    scores = dc.get_label_quality_scores(torch.from_numpy(labels), leaf)
    assert not mask.requires_grad and not scores.requires_grad


def test_degenerate_label_sets():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(5), 50).astype(np.float32)
    for labels in (np.zeros(50, np.int64), np.full(50, 4)):  # one class only (cleanlab refuses)
        for fb in dc.FILTER_BY:
            assert dc.find_label_issues(labels, probs, filter_by=fb).shape == (50,)
    assert dc.find_label_issues(np.array([1]), np.array([[0.3, 0.7]])).tolist() == [False]
