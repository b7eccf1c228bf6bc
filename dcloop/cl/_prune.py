"""The two pruning rules of cleanlab's ``find_label_issues``, vectorised on torch tensors.

Tie handling (``ties``):

* ``"index"`` (default): when several examples share the score at a cut-off, the lowest row
  indices are flagged first. Deterministic and independent of the platform.
* ``"cleanlab"``: only for the lines (class, or class x column) where a tie straddles the
  cut-off, the selection is redone on the host with the very ``np.argsort`` call cleanlab makes
  on the very same values, which reproduces cleanlab's choice bit for bit on the same numpy
  build (numpy's default sort is not stable, so its choice among tied values depends on the
  sort kernel numpy dispatches to, e.g. AVX-512 or not).
"""

from __future__ import annotations

import functools
import logging

import numpy as np
import torch

from dcloop.cl._inputs import Inputs, use_kernels
from dcloop.cl.count import Scan

logger = logging.getLogger(__name__)

TIES = ("index", "cleanlab")


def _numpy_pick(values: torch.Tensor, count: int, *, descending: bool) -> torch.Tensor:
    """``(n,)`` bool: the ``count`` entries cleanlab's ``np.argsort`` would put first."""
    host = values.cpu().numpy()
    order = np.argsort(-host if descending else host)[:count]
    picked = np.zeros(host.shape[0], dtype=bool)
    picked[order] = True
    return torch.from_numpy(picked).to(values.device)


def _take_top_m(
    margin: torch.Tensor, m: torch.Tensor, kk: int, ties: str, lengths: np.ndarray | None = None
) -> torch.Tensor:
    """Mark the ``m[g]`` largest entries of each line ``g`` of ``margin``.

    Args:
        margin: ``(G, n)`` scores, one line per (class, column) to prune, entries in ascending
            row-index order; padding (batched path) is ``-inf``.
        m: ``(G,)`` int64 how many to take from each line (``1 <= m <= kk``).
        kk: ``max(m)`` as a Python int.
        ties: see the module docstring.
        lengths: ``(G,)`` host count of real entries per line (``None``: all ``n``).

    Returns:
        ``(G, n)`` bool. With ``ties="index"``, ties at a cut-off go to the lowest positions.
    """
    cut = margin.topk(kk, dim=1).values.gather(1, (m - 1).unsqueeze(1))  # (G, 1)
    above = margin > cut
    at = margin == cut
    room = (m - above.sum(dim=1)).unsqueeze(1)
    take = above | (at & (at.cumsum(dim=1) <= room))
    if ties == "cleanlab":
        straddling = torch.nonzero(at.sum(dim=1) > room.squeeze(1)).flatten().tolist()
        for g in straddling:
            n = margin.shape[1] if lengths is None else int(lengths[g])
            take[g, :n] = _numpy_pick(margin[g, :n], int(m[g]), descending=True)
    return take


def eligible_classes(counts: np.ndarray, min_examples_per_class: int) -> np.ndarray:
    """Classes cleanlab prunes: more than ``min_examples_per_class`` and more than 1 example."""
    eligible = counts > max(min_examples_per_class, 1)
    few = np.flatnonzero((counts > 0) & (counts <= min_examples_per_class))
    if few.size:
        logger.info(
            "May not flag all label issues in %d class(es) with <= %d examples "
            "(see min_examples_per_class): %s",
            few.size,
            min_examples_per_class,
            few[:20].tolist(),
        )
    return eligible


def _margins(
    inputs: Inputs, rows: torch.Tensor, cols: torch.Tensor, base: torch.Tensor
) -> torch.Tensor:
    """``(G, n)`` margins ``p[rows, cols[g]] - base`` in compute dtype.

    Whole rows are gathered (streaming reads) at most one chunk at a time, then the columns
    picked from the cached block: ~2x faster on CPU than gathering scattered elements.
    """
    step = inputs.chunk_rows
    if rows.numel() <= step:
        block = inputs.probs.index_select(0, rows).index_select(1, cols)
        return block.to(inputs.compute_dtype).t() - base
    margin = torch.empty(cols.numel(), rows.numel(), dtype=inputs.compute_dtype, device=rows.device)
    for r0 in range(0, rows.numel(), step):
        part = inputs.probs.index_select(0, rows[r0 : r0 + step]).index_select(1, cols)
        margin[:, r0 : r0 + step] = part.t()
    return margin.sub_(base)


def prune_by_noise_rate(
    inputs: Inputs,
    s: Scan,
    pcm: np.ndarray,
    min_examples_per_class: int,
    ties: str = "index",
    batched: bool | None = None,
) -> torch.Tensor:
    """cleanlab ``_prune_by_count``: for each given class ``k`` and each ``j != k``, flag the
    ``pcm[j, k]`` examples *given* ``k`` with the largest margin ``p[j] - p[k]`` (ranked among
    all examples given ``k``, not only those confidently counted in cell ``(k, j)``).

    Args:
        batched: process all (class, column) lines in padded batches (few large kernels: the
            default on accelerators) instead of class by class (the default on CPU, where the
            batched gathers are ~5x slower at ImageNet scale). Class by class on the host runs
            the fused numba kernel when available (:func:`dcloop.cl._kernels.prune_noise_rate`:
            each row read once, only at its class's columns), else torch ops.

    Returns:
        ``(N,)`` bool mask on the input device.
    """
    counts = s.label_counts
    todo = pcm.T.astype(np.int64)  # todo[k, j]: how many of given k to flag towards j
    np.fill_diagonal(todo, 0)
    todo[todo < 0] = 0
    todo[~eligible_classes(counts, min_examples_per_class)] = 0
    todo = np.minimum(todo, counts[:, None])
    if batched is None:
        batched = inputs.device.type != "cpu"
    if batched:
        return _noise_rate_batched(inputs, s, todo, ties)
    if use_kernels(inputs):
        return _noise_rate_kernel(inputs, s, todo, ties)
    return _noise_rate_per_class(inputs, s, todo, ties)


@functools.cache
def _half_table(dtype: torch.dtype) -> np.ndarray:
    """float32 value of each of the 65536 bit patterns of a half type (torch's conversion)."""
    bits = torch.from_numpy(np.arange(-(2**15), 2**15, dtype=np.int16))
    values = bits.view(dtype).float().numpy()
    return np.roll(values, -(2**15))  # index = the pattern read as uint16


def _noise_rate_kernel(inputs: Inputs, s: Scan, todo: np.ndarray, ties: str) -> torch.Tensor:
    """:func:`_noise_rate_per_class` in one numba call (one read of the matrix in row order);
    with ``ties="cleanlab"`` the lines whose tie straddles the cut-off are replayed as there."""
    from dcloop.cl import _kernels

    line_class, line_cols = np.nonzero(todo)  # lines grouped by class, columns ascending
    line_m = todo[line_class, line_cols].astype(np.int64)
    line_ptr = np.zeros(inputs.k + 1, np.int64)
    np.cumsum(np.bincount(line_class, minlength=inputs.k), out=line_ptr[1:])
    probs = inputs.probs.detach()
    if probs.dtype in (torch.float16, torch.bfloat16):
        p, table = probs.view(torch.int16).numpy().view(np.uint16), _half_table(probs.dtype)
    else:
        p, table = probs.numpy(), np.empty(1, probs.numpy().dtype)
    other_max = s.other_max.numpy() if s.other_max is not None else None
    if other_max is None:  # no bound from pass 1: read every row
        other_max = np.full(inputs.n, np.inf, s.self_conf.numpy().dtype)
    mask = np.zeros(inputs.n, np.bool_)
    straddle = np.empty(line_cols.size if ties == "cleanlab" else 1, np.int64)
    n_straddle = _kernels.prune_noise_rate(
        p,
        table,
        inputs.labels.numpy(),
        s.self_conf.numpy(),
        other_max,
        line_ptr,
        line_cols.astype(np.int64),
        line_m,
        ties == "cleanlab",
        mask,
        straddle,
    )
    out = torch.from_numpy(mask)
    for g in straddle[:n_straddle].tolist():  # ties="cleanlab": cleanlab's own argsort
        k, j = int(line_class[g]), int(line_cols[g])
        rows = s.perm[s.starts[k] : s.starts[k + 1]]
        margin = _margins(inputs, rows, torch.tensor([j]), s.self_conf.index_select(0, rows))
        out[rows] |= _numpy_pick(margin[0], int(line_m[g]), descending=True)
    return out


def _noise_rate_per_class(inputs: Inputs, s: Scan, todo: np.ndarray, ties: str) -> torch.Tensor:
    dev = inputs.device
    mask = torch.zeros(inputs.n, dtype=torch.bool, device=dev)
    classes = np.flatnonzero(todo.any(axis=1))
    if classes.size == 0:
        return mask
    cols_np = [np.flatnonzero(todo[k]) for k in classes]
    m_np = [todo[k, c] for k, c in zip(classes, cols_np, strict=True)]
    cols_all = torch.from_numpy(np.concatenate(cols_np)).to(dev)  # one host->device copy each
    m_all = torch.from_numpy(np.concatenate(m_np)).to(dev)
    budget = inputs.chunk_rows * inputs.k
    offset = 0
    for k, cols_k, m_k in zip(classes, cols_np, m_np, strict=True):
        rows = s.perm[s.starts[k] : s.starts[k + 1]]  # ascending row index
        base = s.self_conf.index_select(0, rows)  # p[:, k] on the class's rows
        group = max(1, budget // rows.numel())
        hit = None
        for g0 in range(0, cols_k.size, group):
            g1 = min(g0 + group, cols_k.size)
            margin = _margins(inputs, rows, cols_all[offset + g0 : offset + g1], base)
            kk = int(m_k[g0:g1].max())
            take = _take_top_m(margin, m_all[offset + g0 : offset + g1], kk, ties).any(dim=0)
            hit = take if hit is None else hit | take
        mask.index_copy_(0, rows, hit)
        offset += cols_k.size
    return mask


def _noise_rate_batched(inputs: Inputs, s: Scan, todo: np.ndarray, ties: str) -> torch.Tensor:
    """All lines at once, in padded ``(lines, n_max)`` batches of similar-length lines."""
    dev, counts = inputs.device, s.label_counts
    line_k, line_j = np.nonzero(todo)  # lines grouped by class
    hits = torch.zeros(inputs.n, dtype=torch.int32, device=dev)
    order = np.argsort(counts[line_k], kind="stable")  # similar lengths together: less padding
    line_k, line_j = line_k[order], line_j[order]
    line_n, line_m = counts[line_k], todo[line_k, line_j]
    # ~40 bytes of temporaries per batch element (indices, margins, masks): a quarter of a
    # [chunk, K] block's element count keeps a batch within ~2.5 float32 blocks.
    budget = max(inputs.chunk_rows * inputs.k // 4, 1)
    starts_all = torch.from_numpy(s.starts[line_k]).to(dev)
    cols_all = torch.from_numpy(line_j).to(dev)
    m_all = torch.from_numpy(line_m).to(dev)
    n_all = torch.from_numpy(line_n).to(dev)
    lo = 0
    while lo < line_k.size:  # batch [lo, hi): lines sorted by length, so n_max = line_n[hi-1]
        hi = _batch_end(line_n, lo, budget)
        step = torch.arange(int(line_n[hi - 1]), device=dev)
        pad = step >= n_all[lo:hi].unsqueeze(1)  # (L, n_max)
        rows = s.perm[(starts_all[lo:hi].unsqueeze(1) + step).masked_fill_(pad, 0)]
        margin = inputs.probs[rows, cols_all[lo:hi].unsqueeze(1)].to(inputs.compute_dtype)
        margin.sub_(s.self_conf[rows]).masked_fill_(pad, -torch.inf)
        kk = int(line_m[lo:hi].max())
        take = _take_top_m(margin, m_all[lo:hi], kk, ties, line_n[lo:hi])
        hits.index_add_(0, rows.flatten(), take.flatten().to(torch.int32))
        lo = hi
    return hits > 0


def _batch_end(lengths: np.ndarray, lo: int, budget: int) -> int:
    """Largest ``hi > lo`` with ``(hi - lo) * lengths[hi - 1] <= budget`` (at least ``lo + 1``);
    ``lengths`` is sorted ascending, so the padded batch size grows with ``hi`` (bisection)."""
    a, b = lo + 1, lengths.size  # answer in [a, b]
    while a < b:
        mid = (a + b + 1) // 2
        if (mid - lo) * int(lengths[mid - 1]) <= budget:
            a = mid
        else:
            b = mid - 1
    return a


def prune_by_class(
    inputs: Inputs, s: Scan, pcm: np.ndarray, min_examples_per_class: int, ties: str = "index"
) -> torch.Tensor:
    """cleanlab ``_prune_by_class``: flag the ``n_k - pcm[k, k]`` examples of each given class
    ``k`` with the lowest self-confidence, vectorised over all classes with two stable sorts.

    Returns:
        ``(N,)`` bool mask on the input device.
    """
    counts = s.label_counts
    quota = counts - np.diagonal(pcm)
    quota = np.where(eligible_classes(counts, min_examples_per_class) & (quota >= 1), quota, 0)
    quota = np.minimum(quota, counts)
    dev = inputs.device
    by_score = torch.sort(s.self_conf, stable=True).indices
    order = by_score[torch.sort(inputs.labels[by_score], stable=True).indices]
    lab = inputs.labels[order]
    starts = torch.from_numpy(s.starts[:-1]).to(dev)
    rank = torch.arange(inputs.n, device=dev) - starts[lab]
    mask = torch.zeros(inputs.n, dtype=torch.bool, device=dev)
    mask[order] = rank < torch.from_numpy(quota).to(dev)[lab]
    if ties == "cleanlab":
        cand = np.flatnonzero((quota > 0) & (quota < counts))
        if cand.size:
            cut = torch.from_numpy(s.starts[cand] + quota[cand]).to(dev)
            ranked = s.self_conf[order]
            straddling = cand[(ranked[cut - 1] == ranked[cut]).cpu().numpy()]
            for k in straddling:
                rows = s.perm[s.starts[k] : s.starts[k + 1]]
                mask[rows] = _numpy_pick(s.self_conf[rows], int(quota[k]), descending=False)
    return mask
