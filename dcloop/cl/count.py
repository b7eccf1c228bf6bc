"""Confident joint, estimated joint and noise matrices on torch tensors (cleanlab ``count``).

The ``(N, K)`` work is a single chunked pass (:func:`scan`) over ``pred_probs``, which also
validates it; everything of
size ``(K, K)`` is then computed on the host with cleanlab's own float64 numpy expressions
(:mod:`dcloop.cl._kxk`), so results match cleanlab 2.x exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dcloop.cl import _kxk
from dcloop.cl._compat import OOF_HINT, host_matrix, looks_like_x_labels, no_cross_validation
from dcloop.cl._inputs import (
    PROB_RANGE_ATOL,
    ROW_SUM_ATOL,
    Inputs,
    check_row_stats,
    prepare_inputs,
    public_entry,
    raise_invalid,
    use_kernels,
)


@dataclass(frozen=True)
class Scan:
    """Per-example quantities of one pass over ``pred_probs`` (all tensors on the input device).

    Attributes:
        perm: ``(N,)`` int64 row indices sorted by (given label, row index).
        starts: ``(K + 1,)`` host int64 offsets of each class's segment in ``perm``.
        label_counts: ``(K,)`` host int64 number of examples per given label.
        self_conf: ``(N,)`` compute-dtype ``pred_probs[i, labels[i]]``.
        thresholds: ``(K,)`` host per-class thresholds, dtype as cleanlab's.
        pred: ``(N,)`` int64 argmax of each row (first index on ties).
        guess: ``(N,)`` int64 (int32 from the numba kernel) confident guess of the true label
            (meaningless where not ``confident``).
        confident: ``(N,)`` bool, at least one class is at or above its threshold.
        near_given: ``(N,)`` bool, cleanlab's ``_reduce_issues`` mask: the argmax of the row with
            ``1e-6`` added to the given label's probability is the given label.
        by_guess: ``(K, K)`` host int64 counts of confident rows by (guess, given label), when
            the pass produced them (else they are counted from ``guess`` and ``confident``).
        other_max: ``(N,)`` compute-dtype upper bound of ``max_{j != labels[i]} p[i, j]`` (exact
            when that maximum is >= 0), when the pass produced it; pass 2 skips rows with it.
    """

    perm: torch.Tensor
    starts: np.ndarray
    label_counts: np.ndarray
    self_conf: torch.Tensor
    thresholds: np.ndarray
    pred: torch.Tensor
    guess: torch.Tensor
    confident: torch.Tensor
    near_given: torch.Tensor
    by_guess: np.ndarray | None = None
    other_max: torch.Tensor | None = None


def self_confidence(inputs: Inputs) -> torch.Tensor:
    """``(N,)`` compute-dtype ``pred_probs[i, labels[i]]`` (a gather, no ``[N, K]`` pass)."""
    picked = inputs.probs.gather(1, inputs.labels.unsqueeze(1)).squeeze(1)
    return picked.to(inputs.compute_dtype)


def class_layout(inputs: Inputs) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Rows grouped by given label: ``(perm, starts, label_counts)`` (see :class:`Scan`)."""
    perm = torch.sort(inputs.labels, stable=True).indices
    counts = torch.bincount(inputs.labels, minlength=inputs.k).cpu().numpy().astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return perm, starts, counts


def thresholds_from(
    self_conf: torch.Tensor, perm: torch.Tensor, starts: np.ndarray, counts: np.ndarray
) -> np.ndarray:
    """Per-class thresholds = mean self-confidence of each given class, as cleanlab computes it.

    The per-class means are taken with ``np.mean`` over the same values in the same order as
    ``pred_probs[:, k][labels == k]``, so they are bit-identical to cleanlab's.
    """
    sc = self_conf[perm].cpu().numpy()
    per_class = [
        sc[starts[k] : starts[k + 1]] if counts[k] > 0 else None for k in range(len(counts))
    ]
    return _kxk.confident_thresholds(per_class)


def comparison_thresholds(thresholds: np.ndarray, inputs: Inputs) -> torch.Tensor:
    """``thresholds - 1e-6`` as a compute-dtype tensor giving cleanlab's ``>=`` results.

    cleanlab compares ``pred_probs >= thresholds - 1e-6`` in the thresholds' dtype (float64
    when a class is missing). For float32 data we round the float64 bound *up* to float32, which
    gives the same comparison outcome for every float32 value without a float64 copy.
    """
    bound = thresholds - _kxk.FLOATING_POINT_COMPARISON
    if inputs.compute_dtype == torch.float32 and bound.dtype == np.float64:
        b32 = bound.astype(np.float32)
        b32 = np.where(b32.astype(np.float64) < bound, np.nextafter(b32, np.float32(np.inf)), b32)
        bound = b32
    return torch.from_numpy(np.ascontiguousarray(bound)).to(inputs.device, inputs.compute_dtype)


def _count_and_index(
    hits: torch.Tensor, col_index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of a 0/1 float block: the number of ones, and the column of the one when unique.

    Two vectorised sums instead of an ``argmax`` (3-5x faster on CPU); overwrites ``hits``.
    Sums of 0/1 and of one column index are exact in float32 for ``K < 2**24``.
    """
    count = hits.sum(dim=1)
    hits.mul_(col_index)
    return count, hits.sum(dim=1).long()


@dataclass
class _Rows:
    """Per-row results of pass 1 (tensors on the input device)."""

    sums: torch.Tensor | None
    row_max: torch.Tensor
    pred: torch.Tensor
    guess: torch.Tensor
    confident: torch.Tensor
    out_of_range: bool
    by_guess: np.ndarray | None = None
    other_max: torch.Tensor | None = None


def _scan_torch(inputs: Inputs, bound: torch.Tensor, *, host_argmax: bool | None = None) -> _Rows:
    """Pass 1 with torch ops, one ``[chunk, K]`` block at a time (any device).

    No host synchronisation inside the loop on accelerators (one at the end): there the row
    maximum and argmax come from one ``torch.max``; on CPU (``host_argmax``, default: on the
    host) from two sums (unique maxima) plus an exact ``argmax`` on the tied rows.
    """
    n, k, dev, dtype = inputs.n, inputs.k, inputs.device, inputs.compute_dtype
    sums = torch.empty(n, dtype=dtype, device=dev)
    row_min = torch.empty(n, dtype=dtype, device=dev)
    row_max = torch.empty(n, dtype=dtype, device=dev)
    pred = torch.empty(n, dtype=torch.int64, device=dev)
    guess = torch.empty(n, dtype=torch.int64, device=dev)
    confident = torch.empty(n, dtype=torch.bool, device=dev)
    col_index = torch.arange(k, dtype=dtype, device=dev)
    work = torch.empty(inputs.chunk_rows, k, dtype=dtype, device=dev)
    on_host = dev.type == "cpu" if host_argmax is None else host_argmax
    for start, stop in inputs.chunks():
        block, hits = inputs.block(start, stop), work[: stop - start]
        torch.sum(block, dim=1, out=sums[start:stop])
        torch.amin(block, dim=1, out=row_min[start:stop])
        if on_host:
            # Row argmax, first index on ties (np.argmax): unique maxima via sums, ties exactly.
            row_argmax = pred[start:stop]
            torch.amax(block, dim=1, out=row_max[start:stop])
            torch.eq(block, row_max[start:stop].unsqueeze(1), out=hits)
            n_max, row_argmax[:] = _count_and_index(hits, col_index)
            tied = torch.nonzero(n_max > 1).squeeze(1)
            row_argmax[tied] = block[tied].argmax(dim=1)
        else:  # one kernel; torch.max returns the first maximal index, like np.argmax
            torch.max(block, dim=1, out=(row_max[start:stop], pred[start:stop]))
        # cleanlab: several classes at/above threshold -> row argmax; exactly one -> that class.
        torch.ge(block, bound, out=hits)
        n_above, only_above = _count_and_index(hits, col_index)
        guess[start:stop] = torch.where(n_above > 1, pred[start:stop], only_above)
        confident[start:stop] = n_above > 0
    out = (row_min.amin() < -PROB_RANGE_ATOL) | (row_max.amax() > 1 + PROB_RANGE_ATOL)
    return _Rows(sums, row_max, pred, guess, confident, bool(out))


def _range_limits(dt: type) -> tuple[np.floating, np.floating]:
    """``(lo, hi)`` in dtype ``dt`` with ``v < lo`` iff ``v < -PROB_RANGE_ATOL`` and ``v > hi``
    iff ``v > 1 + PROB_RANGE_ATOL`` (in float64) for every ``v`` of that dtype."""
    lo, hi = dt(-PROB_RANGE_ATOL), dt(1 + PROB_RANGE_ATOL)
    if float(lo) < -PROB_RANGE_ATOL:  # the smallest value >= the limit
        lo = np.nextafter(lo, dt(np.inf))
    if float(hi) > 1 + PROB_RANGE_ATOL:  # the largest value <= the limit
        hi = np.nextafter(hi, dt(-np.inf))
    return lo, hi


def _scan_kernel(inputs: Inputs, bound: torch.Tensor) -> _Rows:
    """Pass 1 with the fused numba kernel (host tensors): one read of each row; raises on
    invalid probabilities (the kernel's statistics, no ``(N,)`` row sums kept)."""
    from dcloop.cl import _kernels

    n, k = inputs.n, inputs.k
    dt = np.float64 if inputs.compute_dtype == torch.float64 else np.float32
    signed, unsigned = (np.int64, np.uint64) if dt == np.float64 else (np.int32, np.uint32)
    sign = unsigned(1) << unsigned(8 * np.dtype(dt).itemsize - 1)
    row_max, other_max = np.empty(n, dt), np.empty(n, dt)
    pred, guess = np.empty(n, np.int64), np.empty(n, np.int32)  # guess: internal, K < 2**31
    confident = np.empty(n, np.bool_)
    by_guess = np.zeros((k, k), np.int64)
    labels = inputs.labels.numpy()
    atol = ROW_SUM_ATOL[inputs.probs.dtype]
    args = (labels, bound.numpy(), *_range_limits(dt), atol)
    outs = (row_max, pred, guess, confident, by_guess, other_max.view(signed))
    inf_bits = np.array(np.inf, dt).view(signed)[()]

    def run(p: np.ndarray, row0: int) -> tuple:
        views = (p, p.view(signed), p.view(unsigned), sign, inf_bits)
        return _kernels.scan_rows(*views, row0, *args, *outs)

    probs = inputs.probs.detach()
    if probs.dtype == inputs.compute_dtype and probs.is_contiguous():
        n_out, n_bad, first_bad, worst, first_off = run(probs.numpy(), 0)
    else:  # half types or strided input: upcast / copy one cache-sized chunk at a time
        work = torch.empty(inputs.chunk_rows, k, dtype=inputs.compute_dtype)
        n_out = n_bad = 0
        first_bad = first_off = -1
        worst = 0.0
        for start, stop in inputs.chunks():
            c_out, c_bad, c_first_bad, c_worst, c_first_off = run(
                work[: stop - start].copy_(probs[start:stop]).numpy(), start
            )
            n_out, n_bad, worst = n_out + c_out, n_bad + c_bad, max(worst, c_worst)
            first_bad = first_bad if first_bad >= 0 else c_first_bad
            first_off = first_off if first_off >= 0 else c_first_off
    raise_invalid(
        inputs,
        n_bad=n_bad,
        first_bad=first_bad,
        out_of_range=n_out > 0,
        worst=worst,
        first_off=first_off,
    )
    t = torch.from_numpy
    rows = (None, t(row_max), t(pred), t(guess), t(confident))
    return _Rows(*rows, False, by_guess, t(other_max))


def scan(inputs: Inputs, thresholds: np.ndarray | None = None) -> Scan:
    """One chunked pass over ``pred_probs`` computing everything the filters need, and
    validating it (``ValueError`` as :func:`dcloop.cl._inputs.prepare_inputs` raises).

    ``thresholds``: ``(K,)`` per-class thresholds given by the caller (cleanlab's
    ``thresholds=``), used as given instead of the mean self-confidences.

    The thresholds come from a gather of ``p[i, labels[i]]`` (no ``[N, K]`` pass), so the
    comparisons against them, the argmax, the row sums and the range check all share one read
    of each row: the fused numba kernel on the host (:mod:`dcloop.cl._kernels`), else torch ops
    on ``[chunk, K]`` blocks. Peak extra memory: a few ``(N,)`` vectors, the ``(K, K)`` counts
    and at most one compute-dtype ``[chunk, K]`` work buffer.
    """
    perm, starts, counts = class_layout(inputs)
    self_conf = self_confidence(inputs)
    with np.errstate(all="ignore"):  # invalid input gives NaN thresholds; it raises below
        if thresholds is None:
            thresholds = thresholds_from(self_conf, perm, starts, counts)
        bound = comparison_thresholds(thresholds, inputs)
    if use_kernels(inputs):
        rows = _scan_kernel(inputs, bound)  # checks the probabilities itself
    else:
        rows = _scan_torch(inputs, bound)
        check_row_stats(inputs, rows.sums, out_of_range=rows.out_of_range)
        rows.sums = None  # (N,) freed before the next (N,) temporaries
    # cleanlab _reduce_issues: argmax(row with p[given] += 1e-6) == given, without a copy:
    # the bumped value wins if it exceeds the max, or equals it and no earlier index ties.
    bumped = self_conf + _kxk.FLOATING_POINT_COMPARISON
    near_given = (bumped > rows.row_max) | ((bumped == rows.row_max) & (rows.pred >= inputs.labels))
    return Scan(
        perm,
        starts,
        counts,
        self_conf,
        thresholds,
        rows.pred,
        rows.guess,
        rows.confident,
        near_given,
        rows.by_guess,
        rows.other_max,
    )


def raw_confident_joint(inputs: Inputs, s: Scan) -> np.ndarray:
    """Un-calibrated ``(K, K)`` confident counts with the diagonal clipped to at least 1."""
    k = inputs.k
    by_guess = s.by_guess  # the pass's counts are used in place: the clip below is idempotent
    if by_guess is None:
        cells = s.guess[s.confident].long() * k + inputs.labels[s.confident]
        by_guess = torch.bincount(cells, minlength=k * k).reshape(k, k).cpu().numpy()
    # cleanlab builds confusion_matrix(guess, labels).T: a Fortran-ordered view. The layout
    # matters: it sets the summation order of np.sum during calibration, hence the rounding.
    cj = np.asarray(by_guess, dtype=np.int64).T
    np.fill_diagonal(cj, cj.diagonal().clip(min=1))
    return cj


def confident_joint_from_scan(inputs: Inputs, s: Scan, *, calibrate: bool = True) -> np.ndarray:
    """``(K, K)`` confident joint as cleanlab's ``compute_confident_joint``."""
    cj = raw_confident_joint(inputs, s)
    return _kxk.calibrate_confident_joint(cj, s.label_counts) if calibrate else cj


def off_diagonal_indices(inputs: Inputs, s: Scan) -> torch.Tensor:
    """``(M,)`` ascending indices of the confidently counted examples whose confident guess is
    not their given label (cleanlab's ``return_indices_of_off_diagonals``)."""
    return torch.nonzero(s.confident & (s.guess.long() != inputs.labels)).squeeze(1)


def given_thresholds(thresholds: Any, k: int) -> np.ndarray | None:
    """User ``thresholds=`` as a host ``(K,)`` array (``None`` stays ``None``)."""
    return None if thresholds is None else host_matrix(thresholds, "thresholds", (k,))


@public_entry
def compute_confident_joint(
    labels: Any,
    pred_probs: Any,
    *,
    thresholds: Any = None,
    calibrate: bool = True,
    multi_label: bool = False,
    return_indices_of_off_diagonals: bool = False,
    chunk_size: int | None = None,
) -> Any:
    """Confident joint ``C[i, j]``: examples given label ``i`` confidently belonging to ``j``.

    Same result as ``cleanlab.count.compute_confident_joint`` (per-class thresholds = mean
    self-confidence, argmax among above-threshold classes, diagonal at least 1, optional
    calibration to the label counts), with the same keywords.

    Args:
        labels: ``(N,)`` int tensor/array of given labels in ``[0, K)``; with ``multi_label``,
            a list of N lists of classes.
        pred_probs: ``(N, K)`` float tensor/array of out-of-sample predicted probabilities.
        thresholds: ``(K,)`` per-class thresholds to use instead of the mean self-confidences
            (multi-label: ``(2,)`` for every class or ``(K, 2)``, one row per class).
        calibrate: rescale rows to the given-label counts and the total to ``N``.
        multi_label: one-vs-rest per class (cleanlab's multi-label format): a ``(K, 2, 2)``
            result, one binary joint per class.
        return_indices_of_off_diagonals: also return the indices of the examples counted off
            the diagonal (ascending; multi-label: one array per class).
        chunk_size: rows per ``[chunk, K]`` block (``None``: automatic).

    Returns:
        ``(K, K)`` int64 counts, rows = given label, columns = suspected true label (a torch
        tensor on ``pred_probs``' device for torch input, else numpy), or
        ``(counts, indices)`` with ``return_indices_of_off_diagonals``.
    """
    if multi_label:
        from dcloop.cl import multilabel

        return multilabel.confident_joints(
            labels,
            pred_probs,
            thresholds=thresholds,
            calibrate=calibrate,
            return_indices_of_off_diagonals=return_indices_of_off_diagonals,
            chunk_size=chunk_size,
        )
    inputs = prepare_inputs(labels, pred_probs, chunk_size=chunk_size, check_probs=False)
    s = scan(inputs, given_thresholds(thresholds, inputs.k))
    cj = inputs.out_matrix(confident_joint_from_scan(inputs, s, calibrate=calibrate))
    if return_indices_of_off_diagonals:
        return cj, inputs.out(off_diagonal_indices(inputs, s))
    return cj


def joint_from_confident_joint(confident_joint: Any, labels: Any, k: int) -> np.ndarray:
    """cleanlab ``estimate_joint`` from a given confident joint: calibrated to ``labels``
    (unless ``None``), then normalised to sum to 1."""
    cj = host_matrix(confident_joint, "confident_joint", (k, k))
    if labels is not None:
        lab = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else labels
        counts = np.bincount(np.asarray(lab).astype(np.int64, copy=False), minlength=k)[:k]
        cj = _kxk.calibrate_confident_joint(cj, counts)
    return cj / np.clip(float(np.sum(cj)), a_min=_kxk.TINY_VALUE, a_max=None)


@public_entry
def estimate_joint(
    labels: Any,
    pred_probs: Any = None,
    *,
    confident_joint: Any = None,
    multi_label: bool = False,
    chunk_size: int | None = None,
) -> Any:
    """Estimated joint ``P(given=i, true=j)`` as ``cleanlab.count.estimate_joint``.

    Args:
        labels: ``(N,)`` int tensor/array of given labels (multi-label: list of lists); may be
            ``None`` when ``confident_joint`` is given (then used as is, not calibrated).
        pred_probs: ``(N, K)`` float tensor/array of predicted probabilities (not read when
            ``confident_joint`` is given, single-label).
        confident_joint: a precomputed ``(K, K)`` confident joint (multi-label ``(K, 2, 2)``);
            as in cleanlab it is calibrated to ``labels`` before normalising.
        multi_label: one-vs-rest per class: ``(K, 2, 2)`` result.
        chunk_size: rows per ``[chunk, K]`` block (``None``: automatic).

    Returns:
        ``(K, K)`` float64 matrix summing to 1 (torch for torch input, else numpy).
    """
    if multi_label:
        from dcloop.cl import multilabel

        return multilabel.estimate_joint(
            labels, pred_probs, confident_joint=confident_joint, chunk_size=chunk_size
        )
    if confident_joint is not None:
        k = int(np.shape(confident_joint)[0]) if np.ndim(confident_joint) == 2 else -1
        joint = joint_from_confident_joint(confident_joint, labels, k)
        if isinstance(pred_probs, torch.Tensor):
            return torch.from_numpy(joint).to(pred_probs.device)
        return torch.from_numpy(joint) if isinstance(confident_joint, torch.Tensor) else joint
    inputs = prepare_inputs(labels, pred_probs, chunk_size=chunk_size, check_probs=False)
    cj = confident_joint_from_scan(inputs, scan(inputs), calibrate=True)
    joint = cj / np.clip(float(np.sum(cj)), a_min=_kxk.TINY_VALUE, a_max=None)
    return inputs.out_matrix(joint)


@public_entry
def estimate_noise_matrices(
    labels: Any = None,
    pred_probs: Any = None,
    clf: Any = None,
    *,
    thresholds: Any = None,
    converge_latent_estimates: bool = True,
    X: Any = None,  # noqa: N803 - cleanlab's name
    cv_n_folds: int | None = None,
    seed: Any = None,
    clf_kwargs: dict | None = None,
    validation_func: Any = None,
    chunk_size: int | None = None,
) -> tuple[Any, Any]:
    """Noise and inverse noise matrices from out-of-fold predicted probabilities.

    Same as ``cleanlab.count.estimate_py_and_noise_matrices_from_probabilities`` (calibrated
    confident joint, ``py_method="cnt"``). cleanlab's own ``estimate_noise_matrices(X, labels,
    clf)`` first cross-validates an sklearn model to get those probabilities: here ``X``,
    ``clf``, ``cv_n_folds``, ``seed``, ``clf_kwargs`` and ``validation_func`` (and a positional
    ``(X, labels[, clf])`` call) raise one ``ValueError`` naming the dcloop way to get them (a
    k-fold run's ``oof_probs.npy``, or :class:`dcloop.callbacks.OOFCollector`).

    Args:
        labels: ``(N,)`` int tensor/array of given labels.
        pred_probs: ``(N, K)`` float tensor/array of out-of-fold predicted probabilities.
        thresholds: ``(K,)`` per-class thresholds (default: mean self-confidence per class).
        converge_latent_estimates: iterate the latent estimates to agree (cleanlab's default
            here, ``True``); ``False`` returns the first estimates.
        X, clf, cv_n_folds, seed, clf_kwargs, validation_func: cleanlab's cross-validation;
            not run here (``ValueError``).
        chunk_size: rows per ``[chunk, K]`` block (``None``: automatic).

    Returns:
        ``(noise_matrix, inverse_noise_matrix)``, each ``(K, K)`` float64:
        ``noise_matrix[i, j] = P(given=i | true=j)`` (columns sum to 1) and
        ``inverse_noise_matrix[i, j] = P(true=i | given=j)``.

    Raises:
        ValueError: cleanlab's cross-validation options, or invalid inputs.
    """
    name = "estimate_noise_matrices"
    no_cross_validation(
        name,
        X=X,
        clf=clf,
        cv_n_folds=cv_n_folds,
        seed=seed,
        clf_kwargs=clf_kwargs,
        validation_func=validation_func,
    )
    if pred_probs is None or looks_like_x_labels(labels, pred_probs):
        raise ValueError(f"{name}: needs labels and pred_probs; " + OOF_HINT.format(name=name))
    inputs = prepare_inputs(labels, pred_probs, chunk_size=chunk_size, check_probs=False)
    s = scan(inputs, given_thresholds(thresholds, inputs.k))
    cj = confident_joint_from_scan(inputs, s, calibrate=True)
    _, noise, inverse = _kxk.estimate_latent(
        cj, s.label_counts, inputs.n, converge=bool(converge_latent_estimates)
    )
    return inputs.out_matrix(noise), inputs.out_matrix(inverse)
