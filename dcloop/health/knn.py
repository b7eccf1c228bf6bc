"""Exact k-nearest neighbours on the device, in row chunks with bounded memory.

One ``[rows, N_ref]`` block of distances exists at a time (``chunk_elements`` entries, 64 MB
of float32 by default), so memory is ``O(N k + chunk)`` whatever N is. The distances of the
chosen neighbours are recomputed exactly from the rows (the block uses the fast
``|a|^2 + |b|^2 - 2ab`` form, which loses precision for near-identical rows, precisely the
near-duplicates this package looks for).

Metrics: ``cosine`` (``1 - cos``, cleanlab Datalab's choice for features of more than three
columns) and ``euclidean``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from dcloop._checks import check_int
from dcloop.health._inputs import as_features, check_metric

#: Entries of one working block of distances (float32: 64 MB).
CHUNK_ELEMENTS = 1 << 24


class Neighbours(NamedTuple):
    """``distance (M, k)`` ascending per row and ``index (M, k)`` into the reference rows."""

    distance: torch.Tensor
    index: torch.Tensor


def _prepare(x: torch.Tensor, metric: str) -> torch.Tensor:
    x = x.float()
    if metric == "cosine":
        x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return x


def _exact(q: torch.Tensor, r: torch.Tensor, metric: str) -> torch.Tensor:
    """Distances of row pairs ``q[i], r[i, j]``: ``q (M, D)``, ``r (M, k, D)`` -> ``(M, k)``."""
    if metric == "cosine":
        return (1.0 - torch.einsum("md,mkd->mk", q, r)).clamp_min(0.0)
    return (q[:, None, :] - r).norm(dim=-1)


def knn(
    query: Any,
    reference: Any = None,
    *,
    k: int = 10,
    metric: str = "cosine",
    chunk_elements: int = CHUNK_ELEMENTS,
) -> Neighbours:
    """The ``k`` nearest reference rows of every query row (exact).

    Args:
        query: ``(M, D)`` features (torch on any device, or numpy).
        reference: ``(N, D)`` features; ``None``: the query itself, each row's own entry left
            out (leave-one-out neighbours, as Datalab's kNN graph).
        k: neighbours per row (at most the reference rows available).
        metric: ``"cosine"`` or ``"euclidean"``.
        chunk_elements: entries of the one working block (rows of a chunk = this / N).

    Returns:
        :class:`Neighbours` on the query's device, distances ascending.

    Example:
        >>> d, i = knn(torch.randn(100, 8), k=3)
        >>> d.shape, i.shape
        (torch.Size([100, 3]), torch.Size([100, 3]))
    """
    check_metric(metric)
    q = as_features(query, "query features", min_rows=1)
    self_ref = reference is None
    r = q if self_ref else as_features(reference, "reference features", min_rows=1)
    if r.shape[1] != q.shape[1]:
        raise ValueError(
            f"query and reference features must have the same width D; got {q.shape[1]} and "
            f"{r.shape[1]}"
        )
    available = r.shape[0] - (1 if self_ref else 0)
    check_int("k", k, minimum=1, maximum=max(available, 1))
    check_int("chunk_elements", chunk_elements, minimum=1)
    r = _prepare(r.to(q.device), metric)
    q = r if self_ref else _prepare(q, metric)
    r_sq = (r * r).sum(1) if metric == "euclidean" else None
    rows = max(1, chunk_elements // r.shape[0])
    out_d = torch.empty(q.shape[0], k, device=q.device)
    out_i = torch.empty(q.shape[0], k, dtype=torch.long, device=q.device)
    for start in range(0, q.shape[0], rows):
        stop = min(start + rows, q.shape[0])
        block = q[start:stop] @ r.T  # (rows, N): similarity, or -2ab after the transform below
        if metric == "cosine":
            block.neg_().add_(1.0)
        else:
            block.mul_(-2.0).add_(r_sq[None, :]).add_((q[start:stop] ** 2).sum(1, keepdim=True))
        if self_ref:
            ar = torch.arange(start, stop, device=q.device)
            block[ar - start, ar] = float("inf")
        idx = block.topk(k, dim=1, largest=False).indices
        dist = _exact(q[start:stop], r[idx], metric)
        dist, order = dist.sort(dim=1)
        out_d[start:stop] = dist
        out_i[start:stop] = idx.gather(1, order)
    return Neighbours(out_d, out_i)
