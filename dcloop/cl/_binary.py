"""cleanlab's single-label functions on a binary problem ``(y, [1 - p, p])``, vectorised.

The multi-label functions (:mod:`dcloop.cl.multilabel`) run one binary problem per class, as
cleanlab does. The general engine costs a fixed ~0.1 s per call on a ``(100000, 2)`` matrix
(sorting the labels, per-row kernel overhead); with two columns every step is a handful of
elementwise numpy operations on ``(N,)`` vectors instead, and the per-class selections are
``np.partition`` cut-offs. Same arithmetic as cleanlab on the two-column matrix (same values,
same dtypes, same ``np.mean`` / ``np.argsort`` calls where ties or rounding depend on them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dcloop.cl import _kxk

PRUNE_FILTERS = ("prune_by_noise_rate", "prune_by_class", "both")


@dataclass
class BinaryScan:
    """Per-example quantities of one binary problem (host numpy, ``(N,)`` unless noted).

    Attributes:
        p: probability of the class (``b1``); ``b0 = 1 - p`` in the same dtype.
        y: bool, the class is among the row's labels.
        counts: ``(2,)`` int64 examples with ``y == 0`` / ``y == 1``.
        sc: self-confidence ``b[y]``.
        pred: bool, argmax is 1 (``b1 > b0``; ``np.argmax`` takes 0 on ties).
        guess: bool, confident guess is class 1.
        confident: at least one of the two is at or above its threshold.
        near_given: cleanlab's ``_reduce_issues`` mask.
        raw_cj: ``(2, 2)`` un-calibrated confident joint (diagonal at least 1).
    """

    p: np.ndarray
    b0: np.ndarray
    y: np.ndarray
    counts: np.ndarray
    sc: np.ndarray
    pred: np.ndarray
    guess: np.ndarray
    confident: np.ndarray
    near_given: np.ndarray
    raw_cj: np.ndarray

    def confident_joint(self, calibrate: bool = True) -> np.ndarray:
        cj = self.raw_cj
        return _kxk.calibrate_confident_joint(cj, self.counts) if calibrate else cj

    def off_diagonal(self) -> np.ndarray:
        """Ascending indices counted off the diagonal (``return_indices_of_off_diagonals``)."""
        return np.flatnonzero(self.confident & (self.guess != self.y))


def scan(p: np.ndarray, y: np.ndarray, thresholds: np.ndarray | None = None) -> BinaryScan:
    """cleanlab ``compute_confident_joint`` and ``_reduce_issues`` on ``(y, [1 - p, p])``.

    Args:
        p: ``(N,)`` float32/float64 probability of the class.
        y: ``(N,)`` bool labels.
        thresholds: ``(2,)`` thresholds to use instead of the mean self-confidences.
    """
    b0 = 1 - p
    n1 = int(np.count_nonzero(y))
    counts = np.array([y.size - n1, n1], np.int64)
    if thresholds is None:
        thresholds = _kxk.confident_thresholds(
            [b0[~y] if counts[0] else None, p[y] if counts[1] else None]
        )
    bound = np.asarray(thresholds) - _kxk.FLOATING_POINT_COMPARISON
    above0, above1 = b0 >= bound[0], p >= bound[1]
    pred = p > b0
    guess = np.where(above0 & above1, pred, above1)
    confident = above0 | above1
    by_guess = np.zeros((2, 2), np.int64)  # [guess, given], transposed below as cleanlab's
    for g in (0, 1):
        rows = confident & (guess == g)
        ones = int(np.count_nonzero(rows & y))
        by_guess[g] = (int(np.count_nonzero(rows)) - ones, ones)
    raw = by_guess.T
    np.fill_diagonal(raw, raw.diagonal().clip(min=1))
    sc = np.where(y, p, b0)
    bumped = sc + _kxk.FLOATING_POINT_COMPARISON  # in the data dtype, as cleanlab's += does
    near_given = np.where(y, bumped > b0, bumped >= p)
    return BinaryScan(p, b0, y, counts, sc, pred, guess, confident, near_given, raw)


def _top(values: np.ndarray, m: int, ties: str, largest: bool) -> np.ndarray:
    """Positions of the ``m`` largest (smallest) values; ties at the cut-off to the lowest
    positions, or cleanlab's own ``np.argsort`` order with ``ties="cleanlab"``."""
    n = values.size
    if m >= n:
        return np.arange(n)
    if ties == "cleanlab":
        return np.argsort(-values if largest else values)[:m]
    v = -values if largest else values  # smallest m of v
    cut = np.partition(v, m - 1)[m - 1]
    below, at = v < cut, v == cut
    room = m - int(np.count_nonzero(below))
    return np.flatnonzero(below | (at & (np.cumsum(at) <= room)))


def _flag(rows: np.ndarray, values: np.ndarray, m: int, ties: str, largest: bool, out) -> None:
    if m > 0:
        out[rows[_top(values, int(m), ties, largest)]] = True


def mask(
    s: BinaryScan,
    *,
    filter_by: str,
    frac_noise: float = 1.0,
    num_to_remove_per_class: np.ndarray | None = None,
    min_examples_per_class: int = 1,
    ties: str = "index",
    confident_joint: np.ndarray | None = None,
) -> np.ndarray:
    """cleanlab ``find_label_issues`` mask of the binary problem (options validated)."""
    if filter_by == "predicted_neq_given":
        return (s.pred != s.y) & ~s.near_given
    cl_mask = s.confident & (s.guess != s.y)
    if filter_by == "confident_learning":
        return cl_mask & ~s.near_given
    if filter_by in ("low_self_confidence", "low_normalized_margin"):
        scores = s.sc
        if filter_by == "low_normalized_margin":
            scores = (s.sc - np.where(s.y, s.b0, s.p) + 1) / 2
        n_issues = int(np.count_nonzero(cl_mask & ~s.near_given))
        out = np.zeros(s.y.size, np.bool_)
        if ties == "cleanlab":
            out[np.argsort(scores)[:n_issues]] = True
        elif n_issues:
            out[_top(scores, n_issues, "index", largest=False)] = True
        return out
    cj = s.confident_joint(True) if confident_joint is None else confident_joint
    pcm = _kxk.prune_count_matrix(
        cj,
        s.counts,
        min_examples_per_class=min_examples_per_class,
        frac_noise=frac_noise,
        num_to_remove_per_class=num_to_remove_per_class,
    )
    eligible = s.counts > max(min_examples_per_class, 1)
    rows = (np.flatnonzero(~s.y), np.flatnonzero(s.y))
    out = np.ones(s.y.size, np.bool_) if filter_by == "both" else None
    if filter_by in ("prune_by_class", "both"):
        by_class = np.zeros(s.y.size, np.bool_)
        for k in (0, 1):
            quota = min(int(s.counts[k] - pcm[k][k]), int(s.counts[k]))
            if eligible[k] and quota >= 1:
                _flag(rows[k], s.sc[rows[k]], quota, ties, False, by_class)
        out = by_class if out is None else out & by_class
    if filter_by in ("prune_by_noise_rate", "both"):
        by_rate = np.zeros(s.y.size, np.bool_)
        for k in (0, 1):
            m = min(max(int(pcm[1 - k][k]), 0), int(s.counts[k]))
            if eligible[k] and m > 0:
                other, own = (s.p, s.b0) if k == 0 else (s.b0, s.p)
                _flag(rows[k], other[rows[k]] - own[rows[k]], m, ties, True, by_rate)
        out = by_rate if out is None else out & by_rate
    return out & ~s.near_given
