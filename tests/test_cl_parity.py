"""Parity of dcloop.cl with cleanlab 2.x on the real label-errors sets and random matrices."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import cleanlab.count
import cleanlab.filter
import cleanlab.rank
import numpy as np
import pytest
import torch

import dcloop.cl as dc

DATA = Path(os.environ.get("DCLOOP_LABEL_ERRORS", "/work/shared/data/label-errors"))
REAL = ("mnist", "cifar10", "20news", "imdb")
# cleanlab warns once per small class and call; dcloop logs it once per call instead.
pytestmark = pytest.mark.filterwarnings("ignore:May not flag all label issues:UserWarning")


def random_problem(n, k, seed, *, missing=0, quant=0, onehot=0.0, dtype=np.float32):
    """Noisy labels and softmax-like probabilities.

    ``missing``: classes absent from the labels; ``quant``: probabilities are multinomial counts
    / ``quant`` (many exact ties and zeros); ``onehot``: fraction of exactly one-hot rows.
    """
    rng = np.random.default_rng(seed)
    true = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) * 2.0
    logits[np.arange(n), true] += rng.uniform(0, 6, n)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    if quant:
        p = np.stack([rng.multinomial(quant, row / row.sum()) for row in p]) / quant
    if onehot:
        rows = rng.random(n) < onehot
        p[rows] = np.eye(k)[p[rows].argmax(1)]
    labels = true.copy()
    flip = rng.random(n) < 0.2
    labels[flip] = rng.integers(0, k, flip.sum())
    if missing:
        gone = rng.choice(k, missing, replace=False)
        bad = np.isin(labels, gone)
        labels[bad] = rng.choice(np.setdiff1d(np.arange(k), gone), bad.sum())
    return labels, p.astype(dtype)


class _StableArgsortNumpy:
    """numpy, except that ``argsort`` defaults to a stable sort (ties by ascending index)."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def argsort(a, *args, **kwargs):
        kwargs.setdefault("kind", "stable")
        return np.argsort(a, *args, **kwargs)


def cleanlab_mask(labels, probs, filter_by, stable=False, **kw):
    """cleanlab's mask; with ``stable`` its pruning sorts break ties by index (dcloop's rule)."""
    saved = cleanlab.filter.np
    if stable:
        cleanlab.filter.np = _StableArgsortNumpy()
    try:
        return cleanlab.filter.find_label_issues(labels, probs, filter_by=filter_by, n_jobs=1, **kw)
    finally:
        cleanlab.filter.np = saved


def boundary_ties(labels, probs, filter_by, min_examples_per_class=1):
    """Rows whose pruning score ties with another row *across* a cut-off (the only rows where
    an unstable sort may choose differently), computed independently with numpy."""
    cj = cleanlab.count.compute_confident_joint(labels, probs)
    pcm = cleanlab.filter._keep_at_least_n_per_class(cj.T, n=min_examples_per_class)
    out = np.zeros(len(labels), bool)
    for k in range(probs.shape[1]):
        rows = np.flatnonzero(labels == k)
        if len(rows) <= max(min_examples_per_class, 1):
            continue
        lines = []
        if filter_by in ("prune_by_class", "both"):
            lines.append((probs[rows, k], len(rows) - pcm[k][k]))
        if filter_by in ("prune_by_noise_rate", "both"):
            cols = [j for j in np.flatnonzero(pcm[:, k] > 0) if j != k]
            lines += [(probs[rows, k] - probs[rows, j], pcm[j][k]) for j in cols]
        for score, m in lines:  # lowest m scores are flagged
            if 0 < m < len(rows):
                cut = np.sort(score)[m - 1]
                if (score == cut).sum() > 1 and (score < cut).sum() + (score == cut).sum() > m:
                    out[rows[score == cut]] = True
    return out


PRUNE = ("prune_by_noise_rate", "prune_by_class", "both")


def check_filter(labels, probs, filter_by, chunk_size=None):
    """ties="cleanlab" is bit-identical to cleanlab; the default tie rule equals cleanlab with
    stable sorts and differs from cleanlab only on rows tied across a pruning cut-off."""
    ref = cleanlab_mask(labels, probs, filter_by)
    exact = dc.find_label_issues(
        labels, probs, filter_by=filter_by, ties="cleanlab", chunk_size=chunk_size
    )
    np.testing.assert_array_equal(exact, ref, err_msg=filter_by)
    ours = dc.find_label_issues(labels, probs, filter_by=filter_by, chunk_size=chunk_size)
    if filter_by not in (*PRUNE, "low_self_confidence", "low_normalized_margin"):  # no sorting
        np.testing.assert_array_equal(ours, ref, err_msg=filter_by)
        return
    stable = cleanlab_mask(labels, probs, filter_by, stable=True)
    np.testing.assert_array_equal(ours, stable, err_msg=filter_by)
    if filter_by.startswith("low_"):  # one argsort of all scores: ties at its cut-off differ
        return
    ties = boundary_ties(labels, probs, filter_by)
    diff = ours != ref
    assert not (diff & ~ties).any(), filter_by
    assert diff.sum() <= ties.sum()


# ------------------------------------------------------------------------------ real sets


def _real(name):
    probs = np.load(DATA / f"{name}_pred_probs.npy").astype(np.float64)
    probs /= probs.sum(1, keepdims=True)
    return np.load(DATA / f"{name}_given_labels.npy").astype(np.int64), probs


@pytest.mark.skipif(not DATA.exists(), reason="label-errors data not available")
@pytest.mark.parametrize("name", REAL)
def test_real_sets_identical_masks_every_filter(name):
    labels, probs = _real(name)
    for fb in dc.FILTER_BY:
        check_filter(labels, probs, fb)


@pytest.mark.skipif(not DATA.exists(), reason="label-errors data not available")
def test_real_set_20news_has_boundary_ties_that_the_tie_rule_resolves():
    labels, probs = _real("20news")
    ref = cleanlab_mask(labels, probs, "prune_by_class")
    ours = dc.find_label_issues(labels, probs, filter_by="prune_by_class")
    assert ours.sum() == ref.sum()  # same count per class, different members of a 0.0 tie
    assert 0 < (ours != ref).sum() <= boundary_ties(labels, probs, "prune_by_class").sum()


@pytest.mark.skipif(not DATA.exists(), reason="label-errors data not available")
@pytest.mark.parametrize("name", REAL)
def test_real_sets_counts_and_scores(name):
    labels, probs = _real(name)
    np.testing.assert_array_equal(
        dc.compute_confident_joint(labels, probs),
        cleanlab.count.compute_confident_joint(labels, probs),
    )
    for method in dc.SCORE_METHODS:
        np.testing.assert_allclose(
            dc.get_label_quality_scores(labels, probs, method=method),
            cleanlab.rank.get_label_quality_scores(labels, probs, method=method),
            rtol=1e-12,
            atol=1e-12,
        )


# ------------------------------------------------------------------------- random matrices

CASES = [  # (n, k, seed, options)
    (300, 2, 0, {}),
    (500, 2, 1, {"quant": 16}),
    (400, 3, 2, {"onehot": 0.5}),
    (800, 10, 3, {"missing": 2}),
    (900, 10, 4, {"quant": 8, "dtype": np.float64}),
    (1500, 37, 5, {"missing": 9, "quant": 64, "onehot": 0.3}),
    (1200, 100, 6, {"onehot": 0.9}),
    (2000, 100, 7, {"missing": 30, "dtype": np.float64}),
    (1500, 300, 8, {"quant": 16, "onehot": 0.3}),
    (2000, 1000, 9, {"missing": 200}),
    (1500, 1000, 10, {"quant": 64, "onehot": 0.5, "dtype": np.float64}),
]


@pytest.mark.parametrize(("n", "k", "seed", "opts"), CASES)
def test_random_matrices_match_cleanlab(n, k, seed, opts):
    labels, probs = random_problem(n, k, seed, **opts)
    chunk = int(np.random.default_rng(seed).integers(1, 400))
    for fb in dc.FILTER_BY:
        check_filter(labels, probs, fb, chunk_size=chunk)
    np.testing.assert_array_equal(
        dc.compute_confident_joint(labels, probs),
        cleanlab.count.compute_confident_joint(labels, probs),
    )
    np.testing.assert_array_equal(
        dc.compute_confident_joint(labels, probs, calibrate=False),
        cleanlab.count.compute_confident_joint(labels, probs, calibrate=False),
    )
    np.testing.assert_array_equal(
        dc.estimate_joint(labels, probs), cleanlab.count.estimate_joint(labels, probs)
    )
    _, nm, inm, _ = cleanlab.count.estimate_py_and_noise_matrices_from_probabilities(labels, probs)
    ours_nm, ours_inm = dc.estimate_noise_matrices(labels, probs)
    np.testing.assert_array_equal(ours_nm, nm)
    np.testing.assert_array_equal(ours_inm, inm)


@pytest.mark.parametrize(("n", "k", "seed", "opts"), CASES[::2])
def test_random_scores_match_cleanlab(n, k, seed, opts):
    labels, probs = random_problem(n, k, seed, **opts)
    tol = 1e-12 if probs.dtype == np.float64 else 1e-6
    for method in dc.SCORE_METHODS:
        for adjust in (False, True) if method != "confidence_weighted_entropy" else (False,):
            ref = cleanlab.rank.get_label_quality_scores(
                labels, probs, method=method, adjust_pred_probs=adjust
            )
            ours = dc.get_label_quality_scores(
                labels, probs, method=method, adjust_pred_probs=adjust
            )
            np.testing.assert_allclose(ours, ref, rtol=tol, atol=tol, err_msg=f"{method} {adjust}")
            if not adjust and method != "confidence_weighted_entropy":
                np.testing.assert_array_equal(ours, ref)  # exact: same float operations


@pytest.mark.parametrize("rank_by", dc.SCORE_METHODS)
def test_ranked_indices(rank_by):
    labels, probs = random_problem(1500, 10, 11, quant=32)
    ref = cleanlab.filter.find_label_issues(
        labels, probs, return_indices_ranked_by=rank_by, n_jobs=1
    )
    ours = dc.find_label_issues(labels, probs, return_indices_ranked_by=rank_by)
    np.testing.assert_array_equal(
        np.sort(ours), np.flatnonzero(dc.find_label_issues(labels, probs))
    )
    scores = dc.get_label_quality_scores(labels, probs, method=rank_by)
    assert np.all(np.diff(scores[ours]) >= 0)
    for a, b in zip(ours, ours[1:], strict=False):  # ties keep ascending index order
        assert scores[a] < scores[b] or a < b
    if rank_by != "confidence_weighted_entropy":  # bit-identical scores -> same argsort
        exact = dc.find_label_issues(
            labels, probs, return_indices_ranked_by=rank_by, ties="cleanlab"
        )
        np.testing.assert_array_equal(exact, ref)


@pytest.mark.parametrize(
    "kw",
    [
        {"min_examples_per_class": 0},
        {"min_examples_per_class": 40},
        {"frac_noise": 0.5},
        {"num_to_remove_per_class": [3, 0, 5, 1, 2, 7, 0, 4]},
    ],
)
@pytest.mark.parametrize("filter_by", ["prune_by_noise_rate", "prune_by_class", "both"])
def test_prune_options_match_cleanlab(kw, filter_by):
    labels, probs = random_problem(700, 8, 12, missing=1)
    labels[:30] = 7  # a class with few examples
    ref = cleanlab_mask(labels, probs, filter_by, **kw)
    ours = dc.find_label_issues(labels, probs, filter_by=filter_by, ties="cleanlab", **kw)
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_equal_cleanlab_on_the_float32_upcast(dtype):
    labels, probs = random_problem(1500, 20, 13)
    half = torch.from_numpy(probs).to(dtype)
    upcast = half.float().numpy()
    for fb in dc.FILTER_BY:
        np.testing.assert_array_equal(
            dc.find_label_issues(
                torch.from_numpy(labels), half, filter_by=fb, ties="cleanlab"
            ).numpy(),
            cleanlab_mask(labels, upcast, fb),
        )
    np.testing.assert_array_equal(
        dc.compute_confident_joint(labels, half).numpy(),
        cleanlab.count.compute_confident_joint(labels, upcast),
    )


def test_output_types_follow_the_input():
    labels, probs = random_problem(400, 5, 14)
    m_np = dc.find_label_issues(labels, probs)
    assert isinstance(m_np, np.ndarray) and m_np.dtype == bool and m_np.shape == (400,)
    m_t = dc.find_label_issues(torch.from_numpy(labels), torch.from_numpy(probs))
    assert isinstance(m_t, torch.Tensor) and m_t.dtype == torch.bool
    np.testing.assert_array_equal(m_t.numpy(), m_np)
    idx = dc.find_label_issues(labels, probs, return_indices_ranked_by="self_confidence")
    assert idx.dtype == np.int64
    cj = dc.compute_confident_joint(torch.from_numpy(labels), torch.from_numpy(probs))
    assert isinstance(cj, torch.Tensor) and cj.shape == (5, 5)
    scores = dc.get_label_quality_scores(labels, probs.astype(np.float64))
    assert scores.dtype == np.float64 and (scores >= 0).all() and (scores <= 1).all()


def test_cleanlab_backend_is_cleanlab():
    labels, probs = random_problem(600, 6, 15)
    ref = cleanlab_mask(labels, probs, "both")
    out = dc.find_label_issues(
        torch.from_numpy(labels), torch.from_numpy(probs), filter_by="both", backend="cleanlab"
    )
    assert isinstance(out, torch.Tensor)
    np.testing.assert_array_equal(out.numpy(), ref)


def test_chunk_size_does_not_change_results():
    labels, probs = random_problem(1000, 50, 16, quant=32)
    ref = dc.find_label_issues(labels, probs, filter_by="both")
    for chunk in (1, 3, 64, 999, 10_000):
        np.testing.assert_array_equal(
            dc.find_label_issues(labels, probs, filter_by="both", chunk_size=chunk), ref
        )
        np.testing.assert_array_equal(
            dc.get_label_quality_scores(
                labels, probs, method="normalized_margin", chunk_size=chunk
            ),
            dc.get_label_quality_scores(labels, probs, method="normalized_margin"),
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    labels, probs = random_problem(3000, 100, 17, quant=64, missing=5)
    lab_t, prob_t = torch.from_numpy(labels), torch.from_numpy(probs)
    for fb in dc.FILTER_BY:
        cpu = dc.find_label_issues(lab_t, prob_t, filter_by=fb)
        gpu = dc.find_label_issues(lab_t.cuda(), prob_t.cuda(), filter_by=fb)
        assert gpu.device.type == "cuda"
        torch.testing.assert_close(gpu.cpu(), cpu)
        gpu_exact = dc.find_label_issues(lab_t.cuda(), prob_t.cuda(), filter_by=fb, ties="cleanlab")
        np.testing.assert_array_equal(gpu_exact.cpu().numpy(), cleanlab_mask(labels, probs, fb))


@pytest.mark.parametrize(("n", "k", "seed", "opts"), CASES[1::3])
def test_batched_noise_rate_path_matches(monkeypatch, n, k, seed, opts):
    """The padded, batched prune_by_noise_rate (the accelerator default) on CPU."""
    import dcloop.cl.filter as flt

    batched = functools.partial(flt.prune_by_noise_rate, batched=True)
    monkeypatch.setattr(flt, "prune_by_noise_rate", batched)
    labels, probs = random_problem(n, k, seed, **opts)
    for fb in ("prune_by_noise_rate", "both"):
        check_filter(labels, probs, fb, chunk_size=37)
