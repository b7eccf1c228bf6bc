"""dcloop.cl reads pred_probs in two passes (issue 15 item 4): the fused numba kernels and the
torch code give the same results, whatever the chunk size, and bad input raises the same errors.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import dcloop.cl as dc
from dcloop.cl import _inputs, _kxk, count
from dcloop.cl._prune import _half_table, prune_by_noise_rate

KERNELS_ON = _inputs._kernels_importable()
needs_kernels = pytest.mark.skipif(not KERNELS_ON, reason="numba not installed")


def problem(n=1500, k=7, seed=0, *, quant=0, onehot=0.0, missing=0, dtype=np.float32):
    """Noisy labels and softmax probabilities; ``quant`` makes many exact ties and zeros."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) * 2.0
    logits[np.arange(n), true] += rng.uniform(0, 6, n)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    if quant:
        p = np.round(p * quant) / quant
        p /= p.sum(1, keepdims=True)
    if onehot:
        rows = rng.random(n) < onehot
        p[rows] = np.eye(k)[p[rows].argmax(1)]
    labels = true.copy()
    flip = rng.random(n) < 0.25
    labels[flip] = rng.integers(0, k, flip.sum())
    if missing:
        labels[labels < missing] = missing
    return labels, p.astype(dtype)


def as_torch(probs, dtype):
    """``probs`` as a torch tensor of ``dtype`` (half types quantise the values)."""
    return torch.from_numpy(np.ascontiguousarray(probs, dtype=np.float32)).to(dtype)


@pytest.fixture(params=["kernels", "torch"])
def engine(request, monkeypatch):
    """Run the test once with the numba kernels and once with the torch code."""
    if request.param == "kernels" and not KERNELS_ON:
        pytest.skip("numba not installed")
    monkeypatch.setenv(_inputs.KERNELS_ENV, "1" if request.param == "kernels" else "0")
    return request.param


def both_engines(monkeypatch, fn):
    """``(kernels result, torch result)`` of ``fn()``."""
    out = []
    for flag in ("1", "0"):
        monkeypatch.setenv(_inputs.KERNELS_ENV, flag)
        out.append(fn())
    return out


CASES = [
    dict(),
    dict(quant=20),  # exact ties at the cut-offs and at the row maximum, zeros
    dict(onehot=0.3),
    dict(missing=2, k=6),
    dict(n=400, k=60, quant=8),
]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@needs_kernels
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kernels_and_torch_scan_agree(monkeypatch, case, dtype):
    labels, probs = problem(seed=case, **CASES[case])
    probs_t = as_torch(probs, dtype)
    if dtype in (torch.float16, torch.bfloat16):  # re-normalise so the rows pass the check
        probs_t = (probs_t.float() / probs_t.float().sum(1, keepdim=True)).to(dtype)

    def run():
        inputs = _inputs.prepare_inputs(labels, probs_t, check_probs=False)
        return inputs, count.scan(inputs)

    (inp_k, s_k), (inp_t, s_t) = both_engines(monkeypatch, run)
    for field in ("perm", "self_conf", "pred", "guess", "confident", "near_given"):
        a, b = getattr(s_k, field), getattr(s_t, field)
        if field == "guess":  # meaningless where not confident
            a, b = a[s_k.confident], b[s_t.confident]
        if field in ("pred", "guess"):  # int32 from the kernel, int64 from torch
            a, b = a.long(), b.long()
        assert torch.equal(a, b), field
    np.testing.assert_array_equal(s_k.thresholds, s_t.thresholds)
    np.testing.assert_array_equal(
        count.raw_confident_joint(inp_k, s_k), count.raw_confident_joint(inp_t, s_t)
    )
    # pred is np.argmax (first index on ties) of the rows in compute dtype
    ref = np.argmax(probs_t.to(inp_k.compute_dtype).numpy(), axis=1)
    np.testing.assert_array_equal(s_k.pred.numpy(), ref)
    # the pass-2 bound: max over the other classes, exact when >= 0
    other = probs_t.to(inp_k.compute_dtype).clone()
    other[torch.arange(len(labels)), inp_k.labels] = -torch.inf
    assert torch.equal(s_k.other_max, other.amax(1))


@needs_kernels
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("filter_by", dc.FILTER_BY)
@pytest.mark.parametrize("ties", ["index", "cleanlab"])
def test_kernels_and_torch_masks_agree(monkeypatch, case, filter_by, ties):
    labels, probs = problem(seed=10 + case, **CASES[case])
    for dtype in (torch.float32, torch.float16):
        probs_t = as_torch(probs, dtype)
        if dtype == torch.float16:
            probs_t = (probs_t.float() / probs_t.float().sum(1, keepdim=True)).half()
        got, want = both_engines(
            monkeypatch,
            lambda p=probs_t: dc.find_label_issues(labels, p, filter_by=filter_by, ties=ties),
        )
        assert torch.equal(got, want), (dtype, filter_by, ties)


@needs_kernels
@pytest.mark.parametrize("ties", ["index", "cleanlab"])
def test_pass_two_with_large_prune_counts(monkeypatch, ties):
    """Lines with m in the hundreds (deep heaps) and many tied margins."""
    labels, probs = problem(n=3000, k=4, quant=10, seed=3)
    remove = np.array([400, 250, 300, 1])
    got, want = both_engines(
        monkeypatch,
        lambda: dc.find_label_issues(labels, probs, num_to_remove_per_class=remove, ties=ties),
    )
    np.testing.assert_array_equal(got, want)
    assert got.sum() > 300


@needs_kernels
def test_pass_two_without_a_bound_reads_every_row(monkeypatch):
    """The row-skipping bound of pass 1 only saves reads: without it the mask is the same."""
    labels, probs = problem(n=2000, k=9, quant=12, seed=4)
    inputs = _inputs.prepare_inputs(labels, probs, check_probs=False)
    s = count.scan(inputs)
    cj = count.confident_joint_from_scan(inputs, s)
    pcm = _kxk.prune_count_matrix(
        cj, s.label_counts, min_examples_per_class=1, frac_noise=1.0, num_to_remove_per_class=None
    )
    with_bound = prune_by_noise_rate(inputs, s, pcm, 1)
    s = dataclasses.replace(s, other_max=None)  # no bound: every row is read
    assert torch.equal(prune_by_noise_rate(inputs, s, pcm, 1), with_bound)
    monkeypatch.setenv(_inputs.KERNELS_ENV, "0")
    assert torch.equal(prune_by_noise_rate(inputs, s, pcm, 1), with_bound)


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 333, 1499, 1500, 4096, None])
def test_chunked_equals_unchunked(engine, chunk_size):
    """Chunk sizes that do not divide N, a single row, one chunk: identical results."""
    labels, probs = problem(quant=25, seed=5)
    half = as_torch(probs, torch.float16)
    half = (half.float() / half.float().sum(1, keepdim=True)).half()
    for p in (probs, probs.astype(np.float64), half, np.asfortranarray(probs)):
        ref = dc.find_label_issues(labels, p, chunk_size=len(labels))
        got = dc.find_label_issues(labels, p, chunk_size=chunk_size)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))
        cj = dc.compute_confident_joint(labels, p, chunk_size=chunk_size)
        ref_cj = dc.compute_confident_joint(labels, p, chunk_size=len(labels))
        np.testing.assert_array_equal(np.asarray(cj), np.asarray(ref_cj))


def test_find_label_issues_makes_no_separate_validation_pass(engine, monkeypatch):
    """The engine's own pass checks pred_probs; the stand-alone check pass is not run."""
    labels, probs = problem()

    def no_pass(inputs):
        raise AssertionError("separate validation pass")

    monkeypatch.setattr(_inputs, "_check_probabilities", no_pass)
    for fb in dc.FILTER_BY:
        dc.find_label_issues(labels, probs, filter_by=fb)
    dc.compute_confident_joint(labels, probs)
    dc.estimate_noise_matrices(labels, probs)
    probs[3, 1] = np.nan  # ... and still raises on bad input
    with pytest.raises(ValueError, match="must be finite"):
        dc.find_label_issues(labels, probs)


BAD = [
    ("nan", r"must be finite; got 2 row\(s\) with NaN or inf \(first: row 17\)"),
    ("inf", r"must be finite; got 2 row\(s\) with NaN or inf \(first: row 17\)"),
    ("range", r"must be in \[0, 1\]; got min=-0\.25, max=1\.25"),
    ("sum", r"rows must sum to 1 \(atol=.*\); got max \|row sum - 1\| = 0\.2 "),
]


@pytest.mark.parametrize(("kind", "match"), BAD)
@pytest.mark.parametrize("chunk_size", [None, 5])
@pytest.mark.parametrize("container", ["numpy32", "numpy64", "half", "fortran"])
def test_invalid_input_raises_the_same_errors(engine, kind, match, chunk_size, container):
    labels, probs = problem(n=300, k=4, seed=6)
    probs = probs.astype(np.float64)
    if kind in ("nan", "inf"):
        probs[17, 2] = np.nan if kind == "nan" else np.inf
        probs[200, 0] = -np.inf if kind == "inf" else np.nan
    elif kind == "range":
        probs[5] = [1.25, -0.25, 0.0, 0.0]  # the row still sums to 1
    else:
        probs[123] *= 0.9
        probs[250] *= 0.8  # the worst row, after the first offending one
        match += r"\(first offending row 123 sums to 0\.(9|899)"
    p = {
        "numpy32": lambda: probs.astype(np.float32),
        "numpy64": lambda: probs,
        "half": lambda: torch.from_numpy(probs).half(),
        "fortran": lambda: np.asfortranarray(probs.astype(np.float32)),
    }[container]()
    for fn in (
        lambda: dc.find_label_issues(labels, p, chunk_size=chunk_size),
        lambda: dc.find_label_issues(labels, p, filter_by="predicted_neq_given"),
        lambda: dc.compute_confident_joint(labels, p, chunk_size=chunk_size),
        lambda: dc.get_label_quality_scores(labels, p, chunk_size=chunk_size),
        lambda: dc.find_label_issues(labels, p, backend="cleanlab"),
    ):
        with pytest.raises(ValueError, match=match):
            fn()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_range_limits_are_exact(engine, dtype):
    """A value is out of range iff float(v) < -1e-6 or float(v) > 1 + 1e-6, in every dtype."""
    atol = _inputs.PROB_RANGE_ATOL
    for limit, sign in ((-atol, -1), (1 + atol, 1)):
        near = dtype(limit)
        for v in (np.nextafter(near, dtype(-2)), near, np.nextafter(near, dtype(2))):
            probs = np.full((4, 3), 0.25, dtype)
            probs[:, 2] = 0.5
            probs[1] = [v, 0.5, 0.5 - v] if sign < 0 else [v, 0.0, 1.0 - v]
            out = float(v) < -atol or float(v) > 1 + atol
            labels = np.array([0, 1, 2, 0])
            if out:
                with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
                    dc.find_label_issues(labels, probs)
            else:
                dc.find_label_issues(labels, probs)


def test_small_negative_values_and_negative_zero_are_valid(engine):
    """-0.0 and values within 1e-6 below 0 pass and leave the argmax exact."""
    labels, probs = problem(n=200, k=5, seed=7)
    probs[:50, 1] += probs[:50, 0]
    probs[:50, 0] = -0.0
    probs[50:100, 2] += probs[50:100, 1] + 5e-7
    probs[50:100, 1] = -5e-7
    probs[100:110] = [0.4, 0.4, 0.2, 0.0, -0.0]  # tied maximum
    s = count.scan(_inputs.prepare_inputs(labels, probs, check_probs=False))
    np.testing.assert_array_equal(s.pred.numpy(), np.argmax(probs, 1))
    assert dc.find_label_issues(labels, probs).shape == (200,)


def test_half_tables_decode_every_bit_pattern():
    bits = np.arange(2**16, dtype=np.uint16)
    ref16 = bits.view(np.float16).astype(np.float32)
    got16 = _half_table(torch.float16)
    assert np.array_equal(got16, ref16, equal_nan=True)
    ref_bf = (bits.astype(np.uint32) << 16).view(np.float32)
    got_bf = _half_table(torch.bfloat16)
    assert np.array_equal(got_bf, ref_bf, equal_nan=True)


@needs_kernels
def test_kernels_match_cleanlab_on_half_input():
    """float16 input (decoded in pass 2 by the table) against cleanlab on the upcast values."""
    cleanlab_filter = pytest.importorskip("cleanlab.filter")
    labels, probs = problem(n=2500, k=12, seed=8)
    half = torch.from_numpy(probs).half()
    half = (half.float() / half.float().sum(1, keepdim=True)).half()
    ref = cleanlab_filter.find_label_issues(labels, half.float().numpy(), n_jobs=1)
    got = dc.find_label_issues(torch.from_numpy(labels), half, ties="cleanlab")
    np.testing.assert_array_equal(got.numpy(), ref)


@pytest.mark.parametrize("case", range(len(CASES)))
def test_accelerator_argmax_branch_matches_host_branch(case):
    """The torch scan's accelerator branch (one ``torch.max``, no per-chunk sync), run on the
    CPU, gives the host branch's results (ties at the row maximum included)."""
    labels, probs = problem(seed=20 + case, **CASES[case])
    inputs = _inputs.prepare_inputs(labels, probs, check_probs=False, chunk_size=97)
    s = count.scan(inputs)
    bound = count.comparison_thresholds(s.thresholds, inputs)
    with torch.no_grad():
        host = count._scan_torch(inputs, bound, host_argmax=True)
        device = count._scan_torch(inputs, bound, host_argmax=False)
    for field in ("sums", "row_max", "pred", "guess", "confident"):
        assert torch.equal(getattr(host, field), getattr(device, field)), field
    assert host.out_of_range == device.out_of_range is False
