"""Test-only patterns: test samples with no training sample near them, grouped.

A test sample's score is its distance to the nearest training sample over the
``quantile``-th quantile of the training samples' own (leave-one-out) nearest-neighbour
distances: above 1, it lies farther from the training set than almost every training sample
lies from the rest. Flagged test samples that are within that same distance of each other
form a pattern (connected components); patterns of at least ``min_size`` samples are kept.
This scores the train/test discrepancy that ``discrepancy=true`` draws.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from dcloop._checks import check_float, check_int
from dcloop.health._inputs import as_features
from dcloop.health.knn import knn


class OnlyInTest(NamedTuple):
    """Per test sample: ``score (M,)``, ``pattern (M,)`` (-1: none) and ``flags (M,)``
    (in a kept pattern); ``cutoff`` the training quantile distance."""

    score: torch.Tensor
    pattern: torch.Tensor
    flags: torch.Tensor
    cutoff: float


def _components(adj: torch.Tensor) -> torch.Tensor:
    """Connected-component label (smallest member) of each node of a symmetric bool matrix."""
    label = torch.arange(adj.shape[0], device=adj.device)
    while True:
        nbr = torch.where(adj, label[None, :], adj.shape[0]).amin(1)
        new = torch.minimum(label, nbr)
        if torch.equal(new, label):
            return label
        label = new


def find_test_only(
    train: Any,
    test: Any,
    *,
    metric: str = "cosine",
    quantile: float = 0.99,
    min_size: int = 3,
    max_flagged: int = 4096,
) -> OnlyInTest:
    """Test samples far from every training sample, grouped into patterns.

    Args:
        train: ``(N, D)`` training embeddings.
        test: ``(M, D)`` test embeddings in the same space.
        metric: ``"cosine"`` or ``"euclidean"``.
        quantile: of the training nearest-neighbour distances, the cutoff.
        min_size: smallest pattern kept.
        max_flagged: the farthest this many candidates are grouped (bounds the
            ``(F, F)`` grouping matrix).

    Returns:
        :class:`OnlyInTest`.
    """
    check_float("quantile", quantile, low=0.0, high=1.0)
    check_int("min_size", min_size, minimum=1)
    a = as_features(train, "train features")
    t = as_features(test, "test features", min_rows=1)
    own = knn(a, k=1, metric=metric).distance[:, 0].double()
    cutoff = max(float(torch.quantile(own, quantile)), 1e-12)
    near = knn(t, a, k=1, metric=metric).distance[:, 0]
    score = (near / cutoff).float()
    pattern = torch.full((t.shape[0],), -1, dtype=torch.long, device=t.device)
    far = (score > 1).nonzero().flatten()
    if far.numel() > max_flagged:
        far = far[score[far].argsort(descending=True)[:max_flagged]]
    if far.numel():
        x = t[far].float()
        if metric == "cosine":
            x = torch.nn.functional.normalize(x, dim=1)
            d = (1 - x @ x.T).clamp_min(0)
        else:
            d = torch.cdist(x, x)
        comp = _components(d <= cutoff)
        sizes = torch.bincount(comp, minlength=far.numel())
        keep = sizes[comp] >= min_size
        _, dense = torch.unique(comp[keep], return_inverse=True)
        pattern[far[keep]] = dense
    return OnlyInTest(score, pattern, pattern >= 0, cutoff)
