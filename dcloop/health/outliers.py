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

A group of ``k`` or more alike samples is its own neighbourhood, so the kNN distance does not
see it however far it lies; :func:`find_far_groups` flags small groups (at most 2 % of N)
that every other sample is farther from than Datalab's cutoff (single linkage cut there).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import torch

from dcloop._checks import check_choice, check_float, check_int
from dcloop.errors import UserInputError
from dcloop.health._inputs import as_features, check_metric
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
        >>> bool(find_outliers(x, k=5, metric="euclidean").flags[0])
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


#: Largest group :func:`find_far_groups` looks for by default (it keeps ``N x max(k,
#: max_size)`` neighbours: 256 columns are 3 KB a row).
MAX_GROUP = 256


class FarGroups(NamedTuple):
    """Per sample: ``flags (N,)`` in a small far group, ``group (N,)`` its group (connected
    component at the radius, numbered by its smallest member's row order; every sample has
    one), ``size (N,)`` that group's size, ``gap (N,)`` the distance to the nearest sample
    outside its group (a lower bound, the last neighbour kept, where all kept neighbours are
    inside); ``radius`` the linking distance (Datalab's cutoff), ``max_size`` the largest
    group flagged."""

    flags: torch.Tensor
    group: torch.Tensor
    size: torch.Tensor
    gap: torch.Tensor
    radius: float
    max_size: int


def find_far_groups(
    features: Any,
    *,
    k: int = 10,
    metric: str = "cosine",
    threshold: float = DATALAB_THRESHOLD,
    max_share: float = 0.02,
    max_size: int | None = None,
    min_size: int = 2,
    neighbours: Neighbours | None = None,
) -> FarGroups:
    """Flag small groups of samples that lie far from every other sample.

    Datalab's rule (:func:`find_outliers`) scores a sample by its mean distance to its ``k``
    nearest neighbours, so a group of ``k`` or more alike samples is its own neighbourhood
    and is not seen, however far it lies from the rest (25 planted digit images among 5,000
    CIFAR photos). This rule generalises it from one sample to a group: a group is outlying
    when every sample outside it is farther than Datalab's cutoff from every sample in it.

    The rule, fixed before it was measured on the planted benchmark
    (``scripts/bench_health_planted.py``; its constants were not tuned there):

    1. The radius ``r`` is Datalab's cutoff on the mean ``k``-NN distance
       (:func:`fence` of :func:`find_outliers`'s score, ``Q3 + 1.7 IQR``): the distance that
       already marks a single sample as outlying.
    2. Samples closer than ``r`` are linked; groups are the connected components (single
       linkage cut at ``r``). The links come from each sample's ``K = max(k, max_size)``
       nearest neighbours, which is exact for every group of at most ``K`` samples (the
       nearest outsider of a member of a group of ``s`` is among its ``s`` nearest).
    3. A group of ``min_size`` to ``max_size`` samples is flagged: small (``max_size``
       defaults to ``max_share`` of N, 2 %, at least ``min_size``, at most
       :data:`MAX_GROUP`) and far (by construction every outsider is farther than ``r``).
       ``min_size=2`` leaves single samples to Datalab's rule (a single sample flagged here
       would be flagged there too: its nearest neighbour alone is beyond the cutoff); use
       both, their union.

    Measured (``scripts/results/bench_health_planted.md``): on the CIFAR subset with 25 noise
    images and 25 digits planted it flags no group on the pixel thumbnail, because the
    digits are not far there (their nearest photo is at 0.13-0.33, below the median mean
    10-NN distance 0.32; the radius is 0.68): the union stays at Datalab's F1 0.649. On the
    image properties it finds the 25 noise images as one group (gap 13.6, radius 2.07).
    On the data without plants (CIFAR thumbnails, digits' pixels, AG News TF-IDF + SVD)
    it flags none. Not a run default.

    Args:
        features: ``(N, D)`` embeddings.
        k: neighbours of Datalab's mean distance, which sets the radius.
        metric: ``"cosine"`` or ``"euclidean"``.
        threshold: Datalab's threshold in ``(0, 1]`` (the cutoff ``Q3 + (1/threshold - 1)
            IQR``).
        max_share: in ``(0, 1]``; the largest group flagged, as a share of N (default 2 %).
        max_size: the largest group flagged, in samples (overrides ``max_share``).
        min_size: the smallest group flagged (2: groups only; 1: single samples too).
        neighbours: a leave-one-out :func:`~dcloop.health.knn.knn` of ``features`` with at
            least ``max(k, max_size)`` columns, to share one kNN between detectors.

    Returns:
        :class:`FarGroups`.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(1000, 8, generator=g)
        >>> x = torch.cat([x, 20 + 0.1 * torch.randn(20, 8, generator=g)])  # a far group
        >>> bool(find_far_groups(x, metric="euclidean").flags[1000:].all())
        True
    """
    x = as_features(features)
    n = x.shape[0]
    check_int("k", k, minimum=1, maximum=max(n - 1, 1))
    check_metric(metric)
    check_float("threshold", threshold, low=0.0, high=1.0, low_open=True)
    check_float("max_share", max_share, low=0.0, high=1.0, low_open=True)
    check_int("min_size", min_size, minimum=1)
    if max_size is None:
        max_size = min(max(min_size, math.ceil(max_share * n)), MAX_GROUP)
    check_int("max_size", max_size, minimum=min_size, maximum=max(n - 1, min_size))
    need = min(max(k, max_size), n - 1)
    if neighbours is None:
        neighbours = knn(x, k=need, metric=metric)
    elif neighbours.distance.shape != (n, neighbours.distance.shape[1]) or (
        neighbours.distance.shape[1] < need
    ):
        raise UserInputError(
            f"neighbours must be a knn of the {n} feature rows with at least max(k, max_size) "
            f"= {need} columns; got distance shape {tuple(neighbours.distance.shape)}"
        )
    d = neighbours.distance[:, :need].double().cpu()
    idx = neighbours.index[:, :need].cpu()
    radius = fence(d[:, :k].mean(1), threshold=threshold)
    group = _components(idx, d <= radius)
    size = torch.bincount(group, minlength=n)[group]
    outside = group[idx] != group[:, None]
    first = torch.where(outside.any(1), outside.int().argmax(1), need - 1)
    gap = d.gather(1, first[:, None])[:, 0]
    flags = (size >= min_size) & (size <= max_size)
    dev = neighbours.distance.device
    return FarGroups(
        flags.to(dev), group.to(dev), size.to(dev), gap.float().to(dev), radius, max_size
    )


def _components(index: torch.Tensor, link: torch.Tensor) -> torch.Tensor:
    """``(N,)`` component of each row of the graph whose edges are ``i - index[i, j]`` where
    ``link[i, j]``, undirected; components numbered by their smallest row."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = index.shape[0]
    rows = torch.arange(n)[:, None].expand_as(index)[link].numpy()
    cols = index[link].numpy()
    graph = coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(n, n))
    _, label = connected_components(graph, directed=True, connection="weak")
    label = torch.from_numpy(label.astype(np.int64))
    first = torch.full((n,), n, dtype=torch.long).scatter_reduce(
        0, label, torch.arange(n), reduce="amin"
    )
    _, dense = torch.unique(first[label], return_inverse=True)
    return dense
