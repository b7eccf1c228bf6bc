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

import logging

import numpy as np
import torch

from dcloop.cl._validation import CPU_CHUNK_ELEMENTS, DEVICE_CHUNK_ELEMENTS, Inputs
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


def _top_m_rows(margin: torch.Tensor, m: torch.Tensor, kk: int, ties: str) -> torch.Tensor:
    """Rows among the ``m[c]`` largest entries of line ``c`` of ``margin``, for any ``c``.

    Args:
        margin: ``(G, n)`` scores, one line per (class, column) to prune.
        m: ``(G,)`` int64 how many to take from each line (``1 <= m <= kk <= n``).
        kk: ``max(m)`` as a Python int.
        ties: see the module docstring.

    Returns:
        ``(n,)`` bool.
    """
    cut = margin.topk(kk, dim=1).values.gather(1, (m - 1).unsqueeze(1))  # (G, 1)
    above = margin > cut
    at = margin == cut
    room = (m - above.sum(dim=1)).unsqueeze(1)
    take = above | (at & (at.cumsum(dim=1) <= room))
    if ties == "cleanlab":
        straddling = torch.nonzero(at.sum(dim=1) > room.squeeze(1)).flatten().tolist()
        for c in straddling:
            take[c] = _numpy_pick(margin[c], int(m[c]), descending=True)
    return take.any(dim=0)


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

    Whole rows are gathered (streaming reads) one chunk at a time, then the columns picked
    from the cached block, which is ~2x faster than a scattered 2-D gather on CPU.
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
    inputs: Inputs, s: Scan, pcm: np.ndarray, min_examples_per_class: int, ties: str = "index"
) -> torch.Tensor:
    """cleanlab ``_prune_by_count``: for each given class ``k`` and each ``j != k``, flag the
    ``pcm[j, k]`` examples *given* ``k`` with the largest margin ``p[j] - p[k]`` (ranked among
    all examples given ``k``, not only those confidently counted in cell ``(k, j)``).

    Works class by class on gathered ``(columns, n_k)`` blocks of at most one chunk each.

    Returns:
        ``(N,)`` bool mask on the input device.
    """
    counts = s.label_counts
    todo = pcm.T.astype(np.int64)  # todo[k, j]: how many of given k to flag towards j
    np.fill_diagonal(todo, 0)
    todo[todo < 0] = 0
    todo[~eligible_classes(counts, min_examples_per_class)] = 0
    todo = np.minimum(todo, counts[:, None])
    mask = torch.zeros(inputs.n, dtype=torch.bool, device=inputs.device)
    classes = np.flatnonzero(todo.any(axis=1))
    if classes.size == 0:
        return mask
    dev = inputs.device
    cols_np = [np.flatnonzero(todo[k]) for k in classes]
    m_np = [todo[k, c] for k, c in zip(classes, cols_np, strict=True)]
    cols_all = torch.from_numpy(np.concatenate(cols_np)).to(dev)  # one host->device copy
    m_all = torch.from_numpy(np.concatenate(m_np)).to(dev)
    budget = CPU_CHUNK_ELEMENTS if dev.type == "cpu" else DEVICE_CHUNK_ELEMENTS
    offset = 0
    for k, cols_k, m_k in zip(classes, cols_np, m_np, strict=True):
        n_k = int(counts[k])
        rows = s.perm[s.starts[k] : s.starts[k + 1]]  # ascending row index
        base = s.self_conf[rows]  # p[:, k] on the class's rows
        hit = torch.zeros(n_k, dtype=torch.bool, device=dev)
        group = max(1, budget // n_k)
        for g0 in range(0, cols_k.size, group):
            g1 = min(g0 + group, cols_k.size)
            margin = _margins(inputs, rows, cols_all[offset + g0 : offset + g1], base)
            kk = int(m_k[g0:g1].max())
            hit |= _top_m_rows(margin, m_all[offset + g0 : offset + g1], kk, ties)
        mask[rows] = hit
        offset += cols_k.size
    return mask


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
