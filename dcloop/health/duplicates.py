"""Near-duplicates inside one set, and train/test leakage (test samples with a near-duplicate
in training), from embedding distances.

Inside a set (:func:`find_near_duplicates`) the rule is cleanlab Datalab's: two samples are
near-duplicates when their distance is below ``threshold`` times the median nearest-neighbour
distance of the set (default 0.13); every member of such a pair is flagged.

Across sets (:func:`find_leakage`) each test sample is paired with its nearest training
sample. The pair's ``distance`` is the embedding distance; its ``ratio`` is that distance over
the distance to the *second* nearest training sample. A true copy sits much closer to its
original than to anything else, while a test image from a dense region (a look-alike) has
several neighbours at about the same distance; on the human-judged CIFAR-10 pairs the ratio
ranks leakage far better than the distance (``scripts/results/bench_health_leakage.md``).
A pair is flagged when its distance is below the in-set radius of the training set, or its
ratio below ``ratio_threshold``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from dcloop._checks import check_float
from dcloop.health._inputs import as_features
from dcloop.health.knn import Neighbours, knn

#: Datalab's near-duplicate threshold (a fraction of the median nearest-neighbour distance).
DATALAB_THRESHOLD = 0.13


class NearDuplicates(NamedTuple):
    """``flags (N,)``; ``pairs (P, 2)`` with ``i < j``, sorted by ``distance (P,)`` ascending;
    ``nearest (N,)`` each sample's nearest-neighbour distance; ``radius`` the cutoff."""

    flags: torch.Tensor
    pairs: torch.Tensor
    distance: torch.Tensor
    nearest: torch.Tensor
    radius: float


class Leakage(NamedTuple):
    """Per test sample: ``train (M,)`` its nearest training sample, ``distance (M,)``,
    ``ratio (M,)`` nearest / second-nearest distance, ``flags (M,)``; ``radius`` the
    distance cutoff (from the training set's own nearest-neighbour distances)."""

    train: torch.Tensor
    distance: torch.Tensor
    ratio: torch.Tensor
    flags: torch.Tensor
    radius: float


def _radius(nearest: torch.Tensor, threshold: float) -> float:
    return threshold * max(float(nearest.double().median()), 1e-12)


def find_near_duplicates(
    features: Any,
    *,
    k: int = 10,
    metric: str = "cosine",
    threshold: float = DATALAB_THRESHOLD,
    neighbours: Neighbours | None = None,
) -> NearDuplicates:
    """Pairs of samples closer than ``threshold`` x the median nearest-neighbour distance.

    Args:
        features: ``(N, D)`` embeddings.
        k: neighbours searched per sample (a sample can be in up to ``k`` pairs).
        metric: ``"cosine"`` or ``"euclidean"``.
        threshold: fraction of the median nearest-neighbour distance (Datalab: 0.13).
        neighbours: a leave-one-out kNN of ``features`` to reuse.

    Returns:
        :class:`NearDuplicates`.

    Example:
        >>> x = torch.randn(50, 8); x[7] = x[3] + 1e-4
        >>> find_near_duplicates(x).pairs.tolist()
        [[3, 7]]
    """
    check_float("threshold", threshold, low=0.0)
    if neighbours is None:
        neighbours = knn(features, k=k, metric=metric)
    dist, idx = neighbours.distance[:, :k], neighbours.index[:, :k]
    nearest = dist[:, 0]
    radius = _radius(nearest, threshold)
    hit = dist < radius
    rows = torch.arange(dist.shape[0], device=dist.device)[:, None].expand_as(idx)[hit]
    cols = idx[hit]
    d = dist[hit]
    lo, hi = torch.minimum(rows, cols), torch.maximum(rows, cols)
    key = lo * dist.shape[0] + hi
    key, first = _unique_first(key)
    pairs = torch.stack([lo[first], hi[first]], 1)
    d = d[first]
    order = torch.argsort(d, stable=True)
    flags = torch.zeros(dist.shape[0], dtype=torch.bool, device=dist.device)
    flags[pairs.flatten()] = True
    return NearDuplicates(flags, pairs[order], d[order], nearest, radius)


def _unique_first(key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique keys and the position of each one's first occurrence."""
    uniq, inverse = torch.unique(key, return_inverse=True)
    first = torch.full((uniq.numel(),), key.numel(), dtype=torch.long, device=key.device)
    first.scatter_reduce_(0, inverse, torch.arange(key.numel(), device=key.device), "amin")
    return uniq, first


def find_leakage(
    train: Any,
    test: Any,
    *,
    metric: str = "cosine",
    threshold: float = DATALAB_THRESHOLD,
    ratio_threshold: float = 0.5,
    train_nearest: torch.Tensor | None = None,
) -> Leakage:
    """Each test sample's nearest training sample, scored by distance and distance ratio.

    Args:
        train: ``(N, D)`` training embeddings.
        test: ``(M, D)`` test embeddings in the same space.
        metric: ``"cosine"`` or ``"euclidean"``.
        threshold: distance cutoff as a fraction of the training set's median
            nearest-neighbour distance (the in-set near-duplicate rule).
        ratio_threshold: flag also when nearest / second-nearest is below this
            (0 switches the ratio rule off).
        train_nearest: ``(N,)`` the training set's nearest-neighbour distances, if known.

    Returns:
        :class:`Leakage`.
    """
    check_float("threshold", threshold, low=0.0)
    check_float("ratio_threshold", ratio_threshold, low=0.0, high=1.0)
    a = as_features(train, "train features")
    t = as_features(test, "test features", min_rows=1)
    if train_nearest is None:
        train_nearest = knn(a, k=1, metric=metric).distance[:, 0]
    radius = _radius(train_nearest, threshold)
    nb = knn(t, a, k=2, metric=metric)
    d1, d2 = nb.distance[:, 0], nb.distance[:, 1]
    ratio = d1 / d2.clamp_min(1e-12)
    flags = (d1 < radius) | (ratio < ratio_threshold)
    return Leakage(nb.index[:, 0], d1, ratio, flags, radius)
