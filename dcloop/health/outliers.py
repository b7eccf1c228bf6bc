"""Outliers: samples far from their k nearest neighbours in the embedding (Datalab's rule).

The score of a sample is its mean distance to its ``k`` nearest neighbours. A sample is an
outlier when that distance exceeds ``Q3 + (1/threshold - 1) * IQR`` of all samples' mean
distances (:func:`fence`), cleanlab Datalab's ``OutlierIssueManager`` rule for features (its
default ``threshold = 0.37037`` gives ``Q3 + 1.7 IQR``), so the flags can be compared with
Datalab's.

Sparse features (TF-IDF rows of short texts) share few words with any other row, so their
cosine distances crowd just below 1: the IQR shrinks to nothing next to the gap up to 1 and
the fence lies above every score (AG News with 40 off-topic texts: 0 flagged). With
``scale="log_similarity"`` a neighbour at cosine distance ``d`` counts ``-log(1 - d)``
(minus the log of the similarity), which spreads out exactly the distances near 1.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from dcloop._checks import check_choice, check_float
from dcloop.errors import UserInputError
from dcloop.health.knn import Neighbours, knn

#: Datalab's default threshold for feature-based outliers.
DATALAB_THRESHOLD = 0.37037

#: ``scale`` of :func:`find_outliers`.
SCALES = ("distance", "log_similarity")

#: Smallest similarity ``1 - d`` that ``scale="log_similarity"`` takes the log of (a
#: neighbour sharing nothing scores ``-log(1e-6) = 13.8``).
MIN_SIMILARITY = 1e-6


class Outliers(NamedTuple):
    """``flags (N,)`` bool, ``score (N,)`` mean kNN distance (larger: more outlying),
    ``cutoff`` the mean distance above which a sample is flagged."""

    flags: torch.Tensor
    score: torch.Tensor
    cutoff: float


def fence(score: Any, *, threshold: float = DATALAB_THRESHOLD) -> float:
    """Datalab's cutoff ``Q3 + (1/threshold - 1) * IQR`` of ``(N,)`` scores (larger: more
    outlying); a sample is flagged when its score exceeds it.

    Example:
        >>> fence(torch.arange(9.0))  # Q3 6, IQR 4: 6 + 1.7 * 4
        12.8...
    """
    check_float("threshold", threshold, low=0.0, high=1.0, low_open=True)
    s = torch.as_tensor(score).double().flatten()
    if s.numel() == 0 or not bool(torch.isfinite(s).all()):
        raise UserInputError(f"scores must be finite and non-empty; got {s.numel()} values")
    q1, q3 = torch.quantile(s, torch.tensor([0.25, 0.75], dtype=s.dtype, device=s.device))
    return float(q3 + (1.0 / threshold - 1.0) * (q3 - q1))


def find_outliers(
    features: Any,
    *,
    k: int = 10,
    metric: str = "cosine",
    threshold: float = DATALAB_THRESHOLD,
    neighbours: Neighbours | None = None,
    scale: str = "distance",
) -> Outliers:
    """Flag the samples whose mean distance to their ``k`` neighbours is unusually large.

    Args:
        features: ``(N, D)`` embeddings.
        k: neighbours averaged (Datalab: 10).
        metric: ``"cosine"`` or ``"euclidean"``.
        threshold: in ``(0, 1]``; the cutoff is ``Q3 + (1/threshold - 1) * IQR``.
        neighbours: a leave-one-out :func:`~dcloop.health.knn.knn` of ``features`` with at
            least ``k`` columns, to share one kNN between detectors.
        scale: ``"distance"`` (Datalab's: the score is the mean distance) or
            ``"log_similarity"`` (cosine only: the mean of ``-log(1 - d)`` over the
            neighbours, for sparse features whose distances crowd below 1; module doc).

    Returns:
        :class:`Outliers` (``score`` and ``cutoff`` on the chosen scale).

    Example:
        >>> x = torch.randn(200, 4); x[0] = 50.0
        >>> bool(find_outliers(x, k=5).flags[0])
        True
    """
    check_float("threshold", threshold, low=0.0, high=1.0, low_open=True)
    check_choice("scale", scale, SCALES)
    if scale == "log_similarity" and metric != "cosine":
        raise UserInputError(
            f"scale='log_similarity' needs metric='cosine' (distances 1 - similarity); got "
            f"metric={metric!r}"
        )
    if neighbours is None:
        neighbours = knn(features, k=k, metric=metric)
    d = neighbours.distance[:, :k].double()
    if scale == "log_similarity":
        d = -torch.log((1.0 - d).clamp_min(MIN_SIMILARITY))
    score = d.mean(1)
    cutoff = fence(score, threshold=threshold)
    return Outliers(score > cutoff, score.float(), cutoff)
