"""Outliers: samples far from their k nearest neighbours in the embedding (Datalab's rule).

The score of a sample is its mean distance to its ``k`` nearest neighbours. A sample is an
outlier when that distance exceeds ``Q3 + (1/threshold - 1) * IQR`` of all samples' mean
distances, cleanlab Datalab's ``OutlierIssueManager`` rule for features (its default
``threshold = 0.37037`` gives ``Q3 + 1.7 IQR``), so the flags can be compared with Datalab's.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from dcloop._checks import check_float
from dcloop.health.knn import Neighbours, knn

#: Datalab's default threshold for feature-based outliers.
DATALAB_THRESHOLD = 0.37037


class Outliers(NamedTuple):
    """``flags (N,)`` bool, ``score (N,)`` mean kNN distance (larger: more outlying),
    ``cutoff`` the mean distance above which a sample is flagged."""

    flags: torch.Tensor
    score: torch.Tensor
    cutoff: float


def find_outliers(
    features: Any,
    *,
    k: int = 10,
    metric: str = "cosine",
    threshold: float = DATALAB_THRESHOLD,
    neighbours: Neighbours | None = None,
) -> Outliers:
    """Flag the samples whose mean distance to their ``k`` neighbours is unusually large.

    Args:
        features: ``(N, D)`` embeddings.
        k: neighbours averaged (Datalab: 10).
        metric: ``"cosine"`` or ``"euclidean"``.
        threshold: in ``(0, 1]``; the cutoff is ``Q3 + (1/threshold - 1) * IQR``.
        neighbours: a leave-one-out :func:`~dcloop.health.knn.knn` of ``features`` with at
            least ``k`` columns, to share one kNN between detectors.

    Returns:
        :class:`Outliers`.

    Example:
        >>> x = torch.randn(200, 4); x[0] = 50.0
        >>> bool(find_outliers(x, k=5).flags[0])
        True
    """
    check_float("threshold", threshold, low=0.0, high=1.0, low_open=True)
    if neighbours is None:
        neighbours = knn(features, k=k, metric=metric)
    score = neighbours.distance[:, :k].double().mean(1)
    qs = torch.tensor([0.25, 0.75], dtype=score.dtype, device=score.device)
    q1, q3 = torch.quantile(score, qs)
    cutoff = float(q3 + (1.0 / threshold - 1.0) * (q3 - q1))
    return Outliers(score > cutoff, score.float(), cutoff)
