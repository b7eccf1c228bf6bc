"""Exact k-nearest neighbours on the device, in row chunks with bounded memory.

One ``[rows, N_ref]`` block of distances exists at a time (``chunk_elements`` entries, 64 MB
of float32 by default), so memory is ``O(N k + chunk)`` whatever N is. The distances of the
chosen neighbours are recomputed exactly from the rows (the block uses the fast
``|a|^2 + |b|^2 - 2ab`` form, which loses precision for near-identical rows, precisely the
near-duplicates this package looks for).

Metrics: ``cosine`` (``1 - cos``, cleanlab Datalab's choice for features of more than three
columns) and ``euclidean``.

Large N (``index="cells"``, and ``"auto"`` from :data:`APPROX_ROWS` reference rows on): the
reference rows are split into about ``sqrt(N)`` k-means cells (seeded, fit on a sample), each
query row goes to its nearest cell, and the queries of one cell are compared, as one matrix
product, with the rows of the ``nprobe`` cells nearest to that cell's centre. Approximate
(a neighbour in a cell that is not probed is missed) but about ``cells / nprobe`` times less
work, still BLAS-bound; the neighbours' distances are exact, and a query whose probed cells
hold fewer than ``k`` rows falls back to the exact search. ``index="faiss"`` does the same
with faiss's ``IndexIVFFlat`` (optional extra ``fast``: ``pip install 'dcloop[fast]'``);
on one CPU thread it was slower than ``cells`` (``scripts/results/bench_health_datalab.md``).
"""

from __future__ import annotations

import importlib.util
from typing import Any, NamedTuple

import numpy as np
import torch

from dcloop._checks import check_choice, check_int
from dcloop.errors import UserInputError
from dcloop.health._inputs import as_features, check_metric

#: Entries of one working block of distances (float32: 64 MB).
CHUNK_ELEMENTS = 1 << 24

#: ``index`` of :func:`knn`.
INDEXES = ("exact", "cells", "faiss", "auto")

#: ``index="auto"`` searches by cells from this many reference rows on.
APPROX_ROWS = 50_000


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


def has_faiss() -> bool:
    """Whether the optional faiss package (extra ``fast``) is importable."""
    return importlib.util.find_spec("faiss") is not None


def knn(
    query: Any,
    reference: Any = None,
    *,
    k: int = 10,
    metric: str = "cosine",
    chunk_elements: int = CHUNK_ELEMENTS,
    index: str = "exact",
    nprobe: int | None = None,
) -> Neighbours:
    """The ``k`` nearest reference rows of every query row.

    Args:
        query: ``(M, D)`` features (torch on any device, or numpy).
        reference: ``(N, D)`` features; ``None``: the query itself, each row's own entry left
            out (leave-one-out neighbours, as Datalab's kNN graph).
        k: neighbours per row (at most the reference rows available).
        metric: ``"cosine"`` or ``"euclidean"``.
        chunk_elements: entries of the one working block (rows of a chunk = this / N).
        index: ``"exact"`` (chunked matmul, any device), ``"cells"`` (k-means cells, the
            nearest ``nprobe`` searched; approximate, any device), ``"faiss"`` (the same with
            faiss on the host; needs the extra ``fast``) or ``"auto"`` (``cells`` from
            :data:`APPROX_ROWS` reference rows on, else exact).
        nprobe: cells searched per query (``cells``, ``faiss``; default: 1/8 of the cells,
            at least 16).

    Returns:
        :class:`Neighbours` on the query's device, distances ascending (exact distances of
        the neighbours found).

    Example:
        >>> d, i = knn(torch.randn(100, 8), k=3)
        >>> d.shape, i.shape
        (torch.Size([100, 3]), torch.Size([100, 3]))
    """
    check_metric(metric)
    check_choice("index", index, INDEXES)
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
    if nprobe is not None:
        check_int("nprobe", nprobe, minimum=1)
    if index == "faiss" and not has_faiss():
        raise UserInputError(
            "index='faiss' needs the faiss package; install the extra: pip install "
            "'dcloop[fast]' (or faiss-cpu), or use index='exact'"
        )
    r = _prepare(r.to(q.device), metric)
    q = r if self_ref else _prepare(q, metric)
    if index == "faiss":
        return _faiss(q, r, k, metric, self_ref, chunk_elements, nprobe)
    if index == "cells" or (index == "auto" and r.shape[0] >= APPROX_ROWS):
        return _cells(q, r, k, metric, self_ref, chunk_elements, nprobe)
    return _chunked(q, r, k, metric, self_ref, chunk_elements)


def _lloyd(x: torch.Tensor, n_cells: int, *, iters: int = 10, sample: int = 64) -> torch.Tensor:
    """``(n_cells, D)`` centres of seeded k-means (euclidean) on at most ``sample`` rows per
    cell of ``x``, started from random rows."""
    gen = torch.Generator().manual_seed(0)
    pick = torch.randperm(x.shape[0], generator=gen)[: n_cells * sample].to(x.device)
    fit = x[pick]
    centres = fit[:n_cells].clone()
    for _ in range(iters):
        assign = _nearest_centre(fit, centres)
        sums = torch.zeros_like(centres).index_add_(0, assign, fit)
        counts = torch.bincount(assign, minlength=n_cells).to(fit.dtype)
        live = counts > 0
        centres[live] = sums[live] / counts[live, None]
    return centres


def _nearest_centre(x: torch.Tensor, centres: torch.Tensor, rows: int = 4096) -> torch.Tensor:
    c_sq = (centres * centres).sum(1)
    out = [(c_sq[None] - 2 * x[s : s + rows] @ centres.T).argmin(1) for s in range(0, len(x), rows)]
    return torch.cat(out)


def _cells(
    q: torch.Tensor,
    r: torch.Tensor,
    k: int,
    metric: str,
    self_ref: bool,
    chunk_elements: int,
    nprobe: int | None,
) -> Neighbours:
    """Cell-pruned search (see the module doc): the queries of each reference cell against the
    rows of its ``nprobe`` nearest cells, exact distances of what is found."""
    n = r.shape[0]
    n_cells = max(1, int(round(n**0.5)))
    probe = min(n_cells, nprobe if nprobe is not None else max(16, n_cells // 8))
    centres = _lloyd(r, n_cells)
    r_cell = _nearest_centre(r, centres)
    q_cell = r_cell if self_ref else _nearest_centre(q, centres)
    c_sq = (centres * centres).sum(1)
    near = (c_sq[None] - 2 * centres @ centres.T).topk(probe, dim=1, largest=False).indices
    members = torch.argsort(r_cell, stable=True)
    starts = torch.zeros(n_cells + 1, dtype=torch.long, device=r.device)
    starts[1:] = torch.bincount(r_cell, minlength=n_cells).cumsum(0)
    q_order = torch.argsort(q_cell, stable=True)
    q_starts = torch.zeros(n_cells + 1, dtype=torch.long, device=r.device)
    q_starts[1:] = torch.bincount(q_cell, minlength=n_cells).cumsum(0)
    out_d = torch.empty(q.shape[0], k, device=q.device)
    out_i = torch.empty(q.shape[0], k, dtype=torch.long, device=q.device)
    short = torch.zeros(q.shape[0], dtype=torch.bool, device=q.device)
    starts_l, q_starts_l = starts.tolist(), q_starts.tolist()
    for c in range(n_cells):
        qs = q_order[q_starts_l[c] : q_starts_l[c + 1]]
        if qs.numel() == 0:
            continue
        cand = torch.cat([members[starts_l[j] : starts_l[j + 1]] for j in near[c].tolist()])
        need = k + (1 if self_ref else 0)
        if cand.numel() < need:
            short[qs] = True
            continue
        rows = max(1, chunk_elements // cand.numel())
        rc = r[cand]
        rc_sq = (rc * rc).sum(1)[None] if metric == "euclidean" else None
        for s in range(0, qs.numel(), rows):
            qi = qs[s : s + rows]
            block = q[qi] @ rc.T
            if metric == "cosine":
                block.neg_().add_(1.0)
            else:
                block.mul_(-2.0).add_(rc_sq).add_((q[qi] ** 2).sum(1, keepdim=True))
            if self_ref:
                block[qi[:, None] == cand[None, :]] = float("inf")
            idx = cand[block.topk(k, dim=1, largest=False).indices]
            out_d[qi], out_i[qi] = _exact_sorted(q[qi], r, idx, metric)
    if bool(short.any()):  # too few rows in the probed cells: exact for those queries
        miss = short.nonzero().flatten()
        exact = _chunked_rows(q, r, miss, k, metric, self_ref, chunk_elements)
        out_d[miss], out_i[miss] = exact.distance, exact.index
    return Neighbours(out_d, out_i)


def _chunked(
    q: torch.Tensor, r: torch.Tensor, k: int, metric: str, self_ref: bool, chunk_elements: int
) -> Neighbours:
    """Exact search of prepared rows (``q is r`` when ``self_ref``)."""
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
        out_d[start:stop], out_i[start:stop] = _exact_sorted(q[start:stop], r, idx, metric)
    return Neighbours(out_d, out_i)


def _exact_sorted(
    q: torch.Tensor, r: torch.Tensor, idx: torch.Tensor, metric: str
) -> tuple[torch.Tensor, torch.Tensor]:
    dist, order = _exact(q, r[idx], metric).sort(dim=1)
    return dist, idx.gather(1, order)


def _faiss(
    q: torch.Tensor,
    r: torch.Tensor,
    k: int,
    metric: str,
    self_ref: bool,
    chunk_elements: int,
    nprobe: int | None,
) -> Neighbours:
    """Approximate search with a faiss ``IndexIVFFlat`` (seeded k-means on a sample of at most
    64 rows per cell), exact distances of what it finds; rows short of ``k`` neighbours are
    searched exactly."""
    import faiss

    faiss.omp_set_num_threads(torch.get_num_threads())
    n, d = r.shape
    xr = np.ascontiguousarray(r.detach().cpu().numpy(), dtype=np.float32)
    xq = xr if self_ref else np.ascontiguousarray(q.detach().cpu().numpy(), dtype=np.float32)
    nlist = max(1, int(round(n**0.5)))  # as index='cells'
    probe = min(nlist, nprobe if nprobe is not None else max(16, nlist // 8))
    kind = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
    flat = faiss.IndexFlatIP(d) if metric == "cosine" else faiss.IndexFlatL2(d)
    ivf = faiss.IndexIVFFlat(flat, d, nlist, kind)
    ivf.cp.seed, ivf.cp.niter = 1234, 10
    sample = min(n, 64 * nlist)
    pick = np.sort(np.random.default_rng(0).choice(n, sample, replace=False))
    ivf.train(xr[pick])
    ivf.add(xr)
    ivf.nprobe = probe
    extra = 1 if self_ref else 0
    _, found = ivf.search(xq, k + extra)
    found = torch.from_numpy(found).to(q.device)
    if self_ref:  # drop each row's own entry (or the last, when it was not found)
        own = found == torch.arange(n, device=q.device)[:, None]
        own[:, -1] |= ~own.any(1)
        found = found[~own].view(n, k)
    short = (found < 0).any(1)
    found = found.clamp_min(0)
    out_d, out_i = torch.empty(found.shape, device=q.device), found.clone()
    rows = max(1, chunk_elements // max(k * d, 1))
    for start in range(0, q.shape[0], rows):
        sl = slice(start, start + rows)
        out_d[sl], out_i[sl] = _exact_sorted(q[sl], r, found[sl], metric)
    if bool(short.any()):  # too few neighbours in the probed cells: exact for those rows
        miss = short.nonzero().flatten()
        exact = _chunked_rows(q, r, miss, k, metric, self_ref, chunk_elements)
        out_d[miss], out_i[miss] = exact.distance, exact.index
    return Neighbours(out_d, out_i)


def _chunked_rows(q, r, rows, k, metric, self_ref, chunk_elements) -> Neighbours:
    """Exact neighbours of the query rows ``rows`` (own entries left out when ``self_ref``)."""
    if not self_ref:
        return _chunked(q[rows], r, k, metric, False, chunk_elements)
    nb = _chunked(q[rows], r, k + 1, metric, False, chunk_elements)
    own = nb.index == rows[:, None]
    own[:, -1] |= ~own.any(1)
    return Neighbours(nb.distance[~own].view(-1, k), nb.index[~own].view(-1, k))
