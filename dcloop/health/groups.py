"""Underperforming groups: clusters of the embedding where held-out accuracy is low.

These are the "patterns without enough examples": a kind of sample the model has not learnt
(the roman "I" with stray lines), seen as a region of the embedding whose samples the
held-out replicas get wrong far more often than the rest. The embedding is clustered with
k-means (:func:`kmeans`, on the device); a cluster of at least ``min_size`` samples is flagged
when its held-out accuracy is below ``threshold`` times the accuracy over all samples.
(Datalab clusters with DBSCAN and reports only the worst cluster; here every weak cluster is
listed, so the weak-class rule can target a cluster as well as a class.)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from dcloop._checks import check_float, check_int
from dcloop.errors import UserInputError
from dcloop.health._inputs import as_features, as_labels


class Groups(NamedTuple):
    """``cluster (N,)`` each sample's cluster; per cluster ``size (G,)``, ``accuracy (G,)``,
    ``ratio (G,)`` (accuracy / overall accuracy), ``flagged (G,)``; ``flags (N,)`` samples in
    a flagged cluster; ``overall`` the accuracy over all samples."""

    cluster: torch.Tensor
    size: torch.Tensor
    accuracy: torch.Tensor
    ratio: torch.Tensor
    flagged: torch.Tensor
    flags: torch.Tensor
    overall: float


def kmeans(
    features: Any, n_clusters: int, *, iters: int = 30, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means with k-means++ seeding on cosine-normalised rows.

    Returns:
        ``(assignment (N,), centres (n_clusters, D))``.
    """
    x = as_features(features)
    check_int("n_clusters", n_clusters, minimum=1, maximum=x.shape[0])
    x = torch.nn.functional.normalize(x.float(), dim=1)
    gen = torch.Generator().manual_seed(seed)
    first = int(torch.randint(x.shape[0], (1,), generator=gen))
    centres = [x[first]]
    d2 = ((x - x[first]) ** 2).sum(1)
    for _ in range(1, n_clusters):
        p = (d2 / d2.sum().clamp_min(1e-12)).cpu().double()
        nxt = int(torch.multinomial(p, 1, generator=gen)) if float(p.sum()) > 0 else 0
        centres.append(x[nxt])
        d2 = torch.minimum(d2, ((x - x[nxt]) ** 2).sum(1))
    c = torch.stack(centres)
    assign = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    for _ in range(iters):
        assign = torch.cdist(x, c).argmin(1)
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=n_clusters).clamp_min(1)
        new = sums / counts[:, None]
        empty = torch.bincount(assign, minlength=n_clusters) == 0
        new[empty] = c[empty]
        if torch.allclose(new, c):
            break
        c = new
    return assign, c


def underperforming_groups(
    features: Any,
    labels: Any,
    pred_probs: Any,
    *,
    n_clusters: int | None = None,
    min_size: int = 5,
    threshold: float = 0.5,
    seed: int = 0,
) -> Groups:
    """Clusters whose held-out accuracy is below ``threshold`` x the overall accuracy.

    Args:
        features: ``(N, D)`` embeddings.
        labels: ``(N,)`` given labels.
        pred_probs: ``(N, C)`` held-out (out-of-fold) probabilities.
        n_clusters: k-means clusters (default ``clamp(round(sqrt(N / 2)), 2, 100)``).
        min_size: smallest cluster that can be flagged.
        threshold: in ``(0, 1]``.
        seed: of the k-means seeding.

    Returns:
        :class:`Groups`.
    """
    x = as_features(features)
    n = x.shape[0]
    y = as_labels(labels, n).to(x.device)
    p = torch.as_tensor(pred_probs, device=x.device)
    if p.ndim != 2 or p.shape[0] != n:
        raise UserInputError(f"pred_probs must have shape ({n}, C); got {tuple(p.shape)}")
    check_float("threshold", threshold, low=0.0, high=1.0, low_open=True)
    check_int("min_size", min_size, minimum=1)
    if n_clusters is None:
        n_clusters = int(min(100, max(2, round((n / 2) ** 0.5))))
    assign, _ = kmeans(x, min(n_clusters, n), seed=seed)
    g = int(assign.max()) + 1
    correct = (p.argmax(1) == y).double()
    size = torch.bincount(assign, minlength=g)
    hits = torch.zeros(g, dtype=torch.float64, device=x.device).index_add_(0, assign, correct)
    accuracy = hits / size.clamp_min(1)
    overall = float(correct.mean())
    ratio = accuracy / max(overall, 1e-12)
    flagged = (size >= min_size) & (ratio < threshold)
    return Groups(assign, size, accuracy.float(), ratio.float(), flagged, flagged[assign], overall)
