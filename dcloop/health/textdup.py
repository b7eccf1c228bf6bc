"""Near-duplicate texts by their tokens: the Jaccard similarity of two texts' sets of known
token ids, every pair at or above a threshold found exactly (no training).

A network trained on the labels maps texts by topic, so a near-duplicate rule on its embedding
also pairs two stories of one topic and misses copies of texts it embeds apart: on AG News
with 40 planted edited copies the near-duplicate rule on a default run's embedding scored F1
0.62-0.69 over three seeds, counting AG News's own repeated stories
(``scripts/results/bench_health_planted_run_agnews_embedding*.md``). Sets of tokens are what
deduplication of text corpora compares.

:func:`text_duplicates` finds the pairs with a prefix filter (the *AllPairs* set-similarity
join): with the tokens of each text ordered from the rarest in the corpus, two texts whose
Jaccard is at least ``t`` share a token among the first ``|A| - ceil(t |A|) + 1`` of each
(they share at least ``ceil(t max(|A|, |B|))`` tokens, so the rest of either set cannot hold
them all). Those prefixes hold the rare tokens, so the candidate pairs are few; each is then
checked exactly. Empty sets (texts of padding and unknown words only) pair with nothing.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch

from dcloop._checks import check_float
from dcloop.errors import UserInputError


class TextPairs(NamedTuple):
    """``pairs (P, 2)`` int64: ``(i, j)`` rows of the query and of the reference (inside one
    set ``i < j``), most similar first; ``jaccard (P,)`` their similarity."""

    pairs: torch.Tensor
    jaccard: torch.Tensor


def _sets(ids: Any, name: str, pad_id: int, unk_id: int | None):
    """Binary ``(N, V)`` CSR matrix of each row's distinct known token ids."""
    import scipy.sparse as sp

    t = torch.as_tensor(ids)
    if t.ndim != 2 or t.is_floating_point() or t.dtype == torch.bool:
        raise UserInputError(
            f"{name} must be integer token ids (N, L); got {t.dtype} of shape {tuple(t.shape)}"
        )
    if t.numel() and int(t.min()) < 0:
        raise UserInputError(f"{name} hold negative token ids (smallest {int(t.min())})")
    a = t.cpu().numpy().astype(np.int64)
    known = a != pad_id
    if unk_id is not None:
        known &= a != unk_id
    rows = np.broadcast_to(np.arange(a.shape[0])[:, None], a.shape)[known]
    vocab = int(a.max()) + 1 if a.size else 1
    m = sp.csr_matrix((np.ones(rows.size, np.float32), (rows, a[known])), shape=(a.shape[0], vocab))
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


def _prefixes(m, rank: np.ndarray, threshold: float):
    """The CSR matrix of each row's ``|A| - ceil(t |A|) + 1`` rarest tokens (by ``rank``)."""
    import scipy.sparse as sp

    size = np.diff(m.indptr)
    rows = np.repeat(np.arange(m.shape[0]), size)
    cols = m.indices
    o = np.lexsort((rank[cols], rows))  # grouped by row as in m, rarest first in each
    rows, cols = rows[o], cols[o]
    keep = size - np.ceil(threshold * size - 1e-9).astype(np.int64) + 1
    pos = np.arange(rows.size) - np.repeat(m.indptr[:-1], size)
    sel = pos < keep[rows]
    data = np.ones(int(sel.sum()), np.float32)
    return sp.csr_matrix((data, (rows[sel], cols[sel])), shape=m.shape)


#: Candidate pairs checked at once, about (bounds the memory of the search).
CHECK_CHUNK = 1 << 19


def text_duplicates(
    ids: Any,
    reference: Any = None,
    *,
    threshold: float = 0.6,
    pad_id: int = 0,
    unk_id: int | None = None,
) -> TextPairs:
    """Every pair of texts whose sets of known token ids have a Jaccard of at least
    ``threshold``.

    Args:
        ids: ``(N, L)`` token ids of the query texts (padding ``pad_id``).
        reference: ``(M, L')`` token ids of the same tokenizer (e.g. the training set);
            ``None``: pairs inside ``ids``.
        threshold: in ``(0, 1]``. The default 0.6 scored F1 0.960 on AG News with 40 planted
            edited copies, counting its own repeated stories (word-set Jaccard >= 0.5, fixed
            before measuring) as true; 0.5: 0.914, 0.7: 0.898
            (``scripts/results/bench_text_duplicates.md``).
        pad_id, unk_id: ids left out of the sets (``unk_id`` ``None``: none).

    Returns:
        :class:`TextPairs`.

    Example:
        >>> a = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 8, 0], [1, 2, 3, 0, 0]])
        >>> text_duplicates(a).pairs.tolist()
        [[0, 1]]
    """
    check_float("threshold", threshold, low=0.0, high=1.0, low_open=True)
    q = _sets(ids, "token ids", pad_id, unk_id)
    within = reference is None
    r = q if within else _sets(reference, "reference token ids", pad_id, unk_id)
    vocab = max(q.shape[1], r.shape[1])
    q.resize((q.shape[0], vocab))
    r.resize((r.shape[0], vocab))
    df = np.asarray(r.sum(0)).ravel() + (0 if within else np.asarray(q.sum(0)).ravel())
    rank = np.lexsort((np.arange(vocab), df))  # rarest first, ties by id
    order = np.empty(vocab, np.int64)
    order[rank] = np.arange(vocab)
    pq = _prefixes(q, order, threshold)
    pr = pq if within else _prefixes(r, order, threshold)
    prt = pr.T.tocsr()
    size_q, size_r = np.diff(q.indptr), np.diff(r.indptr)
    # candidates per query row, at most: the reference rows holding each of its prefix tokens
    bound = np.asarray(pq @ np.asarray(pr.sum(0)).ravel()).ravel()
    marks = np.arange(1, 1 + int(bound.sum()) // CHECK_CHUNK) * CHECK_CHUNK
    ends = np.searchsorted(np.cumsum(bound), marks)
    cuts = np.unique(np.concatenate([[0], ends + 1, [q.shape[0]]]).clip(0, q.shape[0]))
    found_i, found_j, found_s = [], [], []
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):  # row chunks of about CHECK_CHUNK candidates
        cand = (pq[a:b] @ prt).tocoo()
        i, j = cand.row.astype(np.int64) + a, cand.col.astype(np.int64)
        if within:
            i, j = i[i < j], j[i < j]
        if i.size == 0:
            continue
        inter = np.asarray(q[i].multiply(r[j]).sum(1)).ravel()
        jac = inter / np.maximum(size_q[i] + size_r[j] - inter, 1)
        keep = jac >= threshold - 1e-9
        found_i.append(i[keep])
        found_j.append(j[keep])
        found_s.append(jac[keep])
    if not found_i or not sum(x.size for x in found_i):
        return TextPairs(torch.zeros(0, 2, dtype=torch.long), torch.zeros(0))
    i, j, jac = np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_s)
    order_pairs = np.lexsort((j, i, -jac))
    pairs = np.stack([i[order_pairs], j[order_pairs]], 1)
    return TextPairs(torch.from_numpy(pairs), torch.from_numpy(jac[order_pairs]).float())
