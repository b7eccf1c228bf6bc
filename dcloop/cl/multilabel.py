"""Multi-label confident learning, one-vs-rest per class, as cleanlab 2.9 does it.

cleanlab's ``multi_label=True`` (labels: a list of N lists of classes) treats each class ``c``
as a binary problem: given label ``y = [c in labels[i]]`` and probabilities
``[1 - p[:, c], p[:, c]]`` (``stack_complement``), runs the single-label function on it, and
combines: a row is a label issue if any class flags it; joints are ``(K, 2, 2)``. Ranked
output and the ``low_*`` filters use cleanlab's multi-label score (``MultilabelScorer``: the
per-class binary scores, sorted, folded by an exponential moving average with ``alpha=0.8``).

Here each binary problem runs through :mod:`dcloop.cl._binary` (cleanlab's arithmetic on the
two columns, vectorised) on the host, one class column at a time (columns are transposed 16 at
a time): the working memory is a few ``(N,)`` vectors, a ``(16, N)`` block and the labels in
sparse form (cleanlab holds an ``(N, K)`` int64 one-hot matrix and, per class, ``(N, 2)``
copies in each worker process). Torch input on an accelerator is read to the host a block of
columns at a time; results go back to its device. The multi-label scores are computed in row
blocks on the host.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import torch

from dcloop.cl import _binary, _kxk
from dcloop.cl._compat import host_matrix, report
from dcloop.cl._inputs import CPU_CHUNK_ELEMENTS, PROB_RANGE_ATOL
from dcloop.cl.filter import LOW_FILTERS, remove_per_class

#: cleanlab's default multi-label aggregator: exponential moving average with this alpha.
EMA_ALPHA = 0.8


@dataclass(frozen=True)
class Labels:
    """Multi-labels in sparse form: ``classes[ptr[i]:ptr[i + 1]]`` are row ``i``'s classes;
    ``by_class`` holds the rows of each class (``rows[by_class[c]:by_class[c + 1]]``)."""

    n: int
    k: int
    ptr: np.ndarray
    classes: np.ndarray
    rows: np.ndarray
    by_class: np.ndarray

    def column(self, c: int, dtype: type = np.int64) -> np.ndarray:
        """``(N,)`` binary label of class ``c`` (1 = ``c`` is among the row's labels)."""
        y = np.zeros(self.n, dtype)
        y[self.rows[self.by_class[c] : self.by_class[c + 1]]] = 1
        return y

    def onehot(self, rows: np.ndarray) -> np.ndarray:
        """``(len(rows), K)`` bool one-hot block of the given (ascending) rows."""
        lengths = self.ptr[rows + 1] - self.ptr[rows]
        total = int(lengths.sum())
        starts = np.repeat(self.ptr[rows] - np.cumsum(lengths) + lengths, lengths)
        flat = starts + np.arange(total)
        out = np.zeros((rows.size, self.k), np.bool_)
        out[np.repeat(np.arange(rows.size), lengths), self.classes[flat]] = True
        return out


def parse_labels(labels: Any, n: int, k: int) -> Labels:
    """Validate cleanlab's multi-label format (a list of N lists of ints in ``[0, K)``)."""
    if not isinstance(labels, list):
        raise TypeError(
            f"labels must be a list of N lists of classes when multi_label=True; got "
            f"{type(labels).__name__}"
        )
    if len(labels) != n:
        raise ValueError(
            f"labels and pred_probs must have the same length; got {len(labels)} labels and "
            f"{n} rows of pred_probs"
        )
    try:
        lengths = np.fromiter(map(len, labels), np.int64, count=n)
        classes = np.fromiter(chain.from_iterable(labels), np.int64, count=int(lengths.sum()))
    except (TypeError, ValueError) as exc:
        raise ValueError(
            "labels must be a list of N lists of integer classes when multi_label=True, e.g. "
            f"[[0], [1, 3], []]; could not read them ({exc})"
        ) from None
    if classes.size and (classes.min() < 0 or classes.max() >= k):
        raise ValueError(
            f"multi-labels must be in [0, {k}); got min={classes.min()}, max={classes.max()}"
        )
    ptr = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=ptr[1:])
    row_of = np.repeat(np.arange(n, dtype=np.int64), lengths)
    order = np.argsort(classes, kind="stable")
    by_class = np.zeros(k + 1, np.int64)
    np.cumsum(np.bincount(classes, minlength=k), out=by_class[1:])
    return Labels(n, k, ptr, classes, row_of[order], by_class)


def _probs(pred_probs: Any) -> tuple[torch.Tensor, bool]:
    if isinstance(pred_probs, torch.Tensor):
        probs = pred_probs.detach()
        as_numpy = False
    else:
        probs = torch.from_numpy(np.asarray(pred_probs))
        as_numpy = True
    if probs.ndim != 2 or probs.shape[1] < 1:
        raise ValueError(f"pred_probs must have shape (N, K); got shape {tuple(probs.shape)}")
    if not probs.dtype.is_floating_point:
        raise TypeError(f"pred_probs must be floating point; got {probs.dtype}")
    if not bool(torch.isfinite(probs).all()):
        raise ValueError("pred_probs must be finite; got NaN or inf")
    lo, hi = (float(v) for v in torch.aminmax(probs.float() if probs.itemsize < 4 else probs))
    if lo < -PROB_RANGE_ATOL or hi > 1 + PROB_RANGE_ATOL:
        raise ValueError(
            f"pred_probs must be in [0, 1] with multi_label (one probability per class); got "
            f"min={lo:.6g}, max={hi:.6g}"
        )
    return probs, as_numpy


def _host(x: torch.Tensor) -> np.ndarray:
    """Host numpy copy/view; half types as float32 (the engine's reference semantics)."""
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    return x.cpu().numpy()


def _per_class_joints(confident_joint: Any, k: int) -> np.ndarray | None:
    """cleanlab's handling of ``confident_joint`` with multi-labels: ``(K, 2, 2)`` per class;
    a ``(K, K)`` one (the old format) is ignored with a ``UserWarning``."""
    if confident_joint is None:
        return None
    shape = tuple(np.shape(confident_joint))
    if shape == (k, k):
        warnings.warn(
            "The recommended format for `confident_joint` in multi_label settings is "
            "(num_classes, 2, 2) as output by compute_confident_joint(..., multi_label=True); "
            "the K x K confident_joint given is ignored",
            UserWarning,
            stacklevel=4,
        )
        return None
    if shape != (k, 2, 2):
        raise ValueError(
            f"confident_joint must have shape ({k}, 2, 2) with multi_label; got {shape}"
        )
    return host_matrix(confident_joint, "confident_joint", (k, 2, 2))


def _out(value: np.ndarray | torch.Tensor, as_numpy: bool, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.cpu().numpy() if as_numpy else value.to(device)
    return value if as_numpy else torch.from_numpy(value).to(device)


def find_label_issues(
    labels: Any,
    pred_probs: Any,
    *,
    filter_by: str,
    return_indices_ranked_by: str | None,
    adjust_pred_probs: bool,
    frac_noise: float,
    num_to_remove_per_class: Any,
    min_examples_per_class: int,
    confident_joint: Any,
    ties: str,
    chunk_size: int | None,
    verbose: Any = False,
) -> Any:
    """cleanlab ``filter.find_label_issues(..., multi_label=True)`` (options validated)."""
    probs, as_numpy = _probs(pred_probs)
    n, k = probs.shape
    ml = parse_labels(labels, n, k)
    cjs = _per_class_joints(confident_joint, k)
    if filter_by in LOW_FILTERS:
        return _low_filter(ml, probs, as_numpy, filter_by, return_indices_ranked_by,
                           adjust_pred_probs, ties, chunk_size, cjs)  # fmt: skip
    remove = None
    if num_to_remove_per_class is not None:
        remove = remove_per_class(num_to_remove_per_class, filter_by, k)
    mask = issues_any(
        ml,
        probs,
        filter_by=filter_by,
        frac_noise=frac_noise,
        remove=remove,
        min_examples_per_class=min_examples_per_class,
        ties=ties,
        cjs=cjs,
    )
    report(verbose, "find_label_issues(multi_label=True)", mask)
    if return_indices_ranked_by is None:
        return _out(mask, as_numpy, probs.device)
    idx = torch.nonzero(mask).squeeze(1).cpu().numpy()
    scores = scores_of(ml, probs, idx, return_indices_ranked_by, adjust_pred_probs, chunk_size)
    return _out(idx[_argsort(scores, ties)], as_numpy, probs.device)


def columns(probs: torch.Tensor, block: int = 16):
    """Yield ``(c, p)``: class ``c``'s probabilities as a contiguous host ``(N,)`` array (half
    types as float32), transposing ``block`` columns at a time (one cache-friendly read)."""
    for c0 in range(0, probs.shape[1], block):
        part = probs[:, c0 : c0 + block]
        if part.dtype in (torch.float16, torch.bfloat16):
            part = part.float()
        host = np.ascontiguousarray(part.cpu().numpy().T)
        yield from ((c0 + i, host[i]) for i in range(host.shape[0]))


def issues_any(
    ml: Labels,
    probs: torch.Tensor,
    *,
    filter_by: str,
    frac_noise: float = 1.0,
    remove: np.ndarray | None = None,
    min_examples_per_class: int = 1,
    ties: str = "index",
    cjs: np.ndarray | None = None,
) -> torch.Tensor:
    """``(N,)`` bool: rows flagged by the binary problem of at least one class."""
    if filter_by == "confident_learning" and cjs is not None:
        warnings.warn(
            "The supplied `confident_joint` is ignored when `filter_by = "
            "'confident_learning'`; the confident joint is re-estimated from the labels",
            UserWarning,
            stacklevel=4,
        )
    out = np.zeros(ml.n, np.bool_)
    for c, p in columns(probs):
        out |= _binary.mask(
            _binary.scan(p, ml.column(c, np.bool_)),
            filter_by=filter_by,
            frac_noise=frac_noise,
            num_to_remove_per_class=None if remove is None else np.array([remove[c], 0]),
            min_examples_per_class=min_examples_per_class,
            ties=ties,
            confident_joint=None if cjs is None else cjs[c],
        )
    return torch.from_numpy(out).to(probs.device)


def _argsort(scores: np.ndarray, ties: str) -> np.ndarray:
    return np.argsort(scores) if ties == "cleanlab" else np.argsort(scores, kind="stable")


def _low_filter(ml, probs, as_numpy, filter_by, rank_by, adjust, ties, chunk_size, cjs) -> Any:
    """cleanlab ``_find_label_issues_multilabel`` for the ``low_*`` filters: the rows with the
    lowest multi-label self-confidence score, as many as the multi-label confident-learning
    filter flags. (cleanlab scores with self-confidence whichever ``low_*`` filter is named.)"""
    n_issues = int(issues_any(ml, probs, filter_by="confident_learning", ties=ties,
                              cjs=cjs).sum())  # fmt: skip
    scores = scores_of(ml, probs, None, "self_confidence", False, chunk_size)
    picked = _argsort(scores, ties)[:n_issues]
    mask = np.zeros(ml.n, np.bool_)
    mask[picked] = True
    if rank_by is None:
        return _out(mask, as_numpy, probs.device)
    # cleanlab scores the flagged rows in row order (thresholds from those rows alone) and
    # uses that order to permute its score-ordered indices; reproduced as is.
    rows = np.flatnonzero(mask)
    sub = scores_of(ml, probs, rows, rank_by, adjust, chunk_size, thresholds_from_rows=True)
    return _out(picked[_argsort(sub, ties)], as_numpy, probs.device)


def _host_column(probs: torch.Tensor, c: int, rows: np.ndarray | None) -> np.ndarray:
    col = probs[:, c] if rows is None else probs[torch.from_numpy(rows).to(probs.device), c]
    return _host(col)


def _binary_thresholds(ml: Labels, probs: torch.Tensor, rows: np.ndarray | None) -> list:
    """Per class, cleanlab ``get_confident_thresholds(y, stack_complement(p))`` over ``rows``."""
    out = []
    for c in range(ml.k):
        p = _host_column(probs, c, rows)
        y = ml.column(c) if rows is None else ml.column(c)[rows]
        zero, one = y == 0, y == 1
        out.append(
            _kxk.confident_thresholds(
                [(1 - p)[zero] if zero.any() else None, p[one] if one.any() else None]
            )
        )
    return out


def _binary_scores(y: np.ndarray, p: np.ndarray, method: str, thr: np.ndarray | None):
    """cleanlab's single-label score of ``(y, stack_complement(p))`` with numpy's operations on
    the two columns (elementwise, so any shape of ``p`` works; ``thr`` ``(2, ...)``)."""
    b0, b1 = 1 - p, p
    if thr is not None:  # _subtract_confident_thresholds
        b0 = b0 - thr[0]
        b1 = b1 - thr[1]
        top = np.maximum(thr[0], thr[1])
        b0 += top
        b1 += top
        total = b0 + b1
        b0 /= total
        b1 /= total
    sc = np.where(y, b1, b0)
    if method == "self_confidence":
        return sc
    if method == "normalized_margin":
        return (sc - np.where(y, b0, b1) + 1) / 2
    from scipy.special import xlogy  # cleanlab's entropy; imported only when needed (~1 s)

    entropy = -(xlogy(b0, b0) + xlogy(b1, b1)) / np.log(2)
    sc = np.clip(sc, a_min=_kxk.CLIPPING_LOWER_BOUND, a_max=None)
    ratio = entropy / sc
    clipped = np.clip(ratio, a_min=_kxk.CLIPPING_LOWER_BOUND, a_max=None)
    return np.log(ratio + 1) / clipped


def _ema(scores: np.ndarray) -> np.ndarray:
    """cleanlab ``exponential_moving_average(s, alpha=0.8)`` over each row."""
    s_sorted = np.fliplr(np.sort(scores, axis=1))
    s_ema, s_next = s_sorted.T[0], s_sorted.T[1:]
    for s_i in s_next:
        s_ema = EMA_ALPHA * s_i + (1 - EMA_ALPHA) * s_ema
    return s_ema


def scores_of(
    ml: Labels,
    probs: torch.Tensor,
    rows: np.ndarray | None,
    method: str,
    adjust: bool,
    chunk_size: int | None,
    *,
    thresholds_from_rows: bool = False,
) -> np.ndarray:
    """cleanlab ``multilabel_scorer.get_label_quality_scores`` (``MultilabelScorer`` with base
    scorer ``method``) for ``rows`` (ascending; ``None``: all), float64, in row blocks. With
    ``adjust``, the binary thresholds come from all rows, or from ``rows`` alone."""
    if method == "confidence_weighted_entropy" and adjust:
        raise ValueError("adjust_pred_probs is not supported for confidence_weighted_entropy")
    rows = np.arange(ml.n) if rows is None else np.asarray(rows, np.int64)
    thr_list = None
    if adjust:
        thr_list = _binary_thresholds(ml, probs, rows if thresholds_from_rows else None)
    same_dtype = thr_list is None or len({t.dtype for t in thr_list}) == 1
    thr = None if thr_list is None or not same_dtype else np.stack(thr_list, axis=1)  # (2, K)
    step = chunk_size or max(1, CPU_CHUNK_ELEMENTS // max(ml.k, 1))
    out = np.empty(rows.size, np.float64)
    for r0 in range(0, rows.size, step):
        block_rows = rows[r0 : r0 + step]
        p = _host(probs[torch.from_numpy(block_rows).to(probs.device)])
        y = ml.onehot(block_rows)
        scores = np.zeros(p.shape, np.float64)
        if same_dtype:
            scores[:] = _binary_scores(y, p, method, thr)
        else:  # per-class thresholds of different dtypes (missing classes): class by class
            for c in range(ml.k):
                scores[:, c] = _binary_scores(y[:, c], p[:, c], method, thr_list[c])
        out[r0 : r0 + step] = _ema(scores)
    return out


def _binary_thresholds_arg(thresholds: Any, k: int) -> list | None:
    if thresholds is None:
        return None
    arr = np.asarray(thresholds.cpu() if isinstance(thresholds, torch.Tensor) else thresholds)
    if arr.shape == (2,):
        return [arr] * k
    if arr.shape == (k, 2):
        return list(arr)
    raise ValueError(
        f"thresholds must have shape (2,) or ({k}, 2) with multi_label; got {arr.shape}"
    )


def confident_joints(
    labels: Any,
    pred_probs: Any,
    *,
    thresholds: Any = None,
    calibrate: bool = True,
    return_indices_of_off_diagonals: bool = False,
    chunk_size: int | None = None,
) -> Any:
    """cleanlab ``compute_confident_joint(..., multi_label=True)``: ``(K, 2, 2)`` int64."""
    probs, as_numpy = _probs(pred_probs)
    n, k = probs.shape
    ml = parse_labels(labels, n, k)
    thr = _binary_thresholds_arg(thresholds, k)
    joints = np.empty((k, 2, 2), np.int64)
    indices = []
    for c, p in columns(probs):
        given = None if thr is None else host_matrix(thr[c], "thresholds", (2,))
        s = _binary.scan(p, ml.column(c, np.bool_), given)
        joints[c] = s.confident_joint(calibrate)
        if return_indices_of_off_diagonals:
            indices.append(_out(s.off_diagonal(), as_numpy, probs.device))
    out = _out(joints, as_numpy, probs.device)
    return (out, indices) if return_indices_of_off_diagonals else out


def estimate_joint(
    labels: Any, pred_probs: Any, *, confident_joint: Any = None, chunk_size: int | None = None
) -> Any:
    """cleanlab ``estimate_joint(..., multi_label=True)``: ``(K, 2, 2)`` float64; a given
    ``(K, 2, 2)`` confident joint is calibrated per class to the labels first, as cleanlab."""
    probs, as_numpy = _probs(pred_probs)
    n, k = probs.shape
    ml = parse_labels(labels, n, k)
    if confident_joint is None:
        cj = confident_joints(labels, probs, calibrate=True, chunk_size=chunk_size)
        cj = cj.cpu().numpy() if isinstance(cj, torch.Tensor) else cj
    else:
        cj = host_matrix(confident_joint, "confident_joint", (k, 2, 2))
    joint = np.empty((k, 2, 2), np.float64)
    for c in range(k):
        counts = np.bincount(ml.column(c), minlength=2)
        cal = _kxk.calibrate_confident_joint(cj[c], counts)
        joint[c] = cal / np.clip(float(np.sum(cal)), a_min=_kxk.TINY_VALUE, a_max=None)
    return _out(joint, as_numpy, probs.device)
