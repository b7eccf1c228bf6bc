"""Off-topic texts: texts whose words the rest of the corpus rarely uses (no training).

A text about something else than the corpus is written in words that the corpus's other
texts seldom hold. :func:`token_rarity` scores each text by the mean inverse document
frequency ``log(N / df)`` of its distinct tokens, ``df`` the number of the ``N`` texts that
hold the token: the out-of-vocabulary rate of domain-shift checks, made continuous. An id
the tokenizer could not place (``unk_id``: a word below its ``min_count``) counts as a token
seen in one text, the rarest there is. Unlike a kNN distance on sparse word vectors, whose
values crowd below 1 (:mod:`dcloop.health.outliers`), the score is spread out, and
:func:`find_rare_texts` flags it with Datalab's fence (:func:`~dcloop.health.outliers.fence`).

Measured on AG News with 40 planted off-topic texts (``scripts/bench_health_planted.py``):
see ``docs/health.md``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from dcloop.errors import UserInputError
from dcloop.health.outliers import DATALAB_THRESHOLD, Outliers, fence


def _ids(x: Any) -> torch.Tensor:
    t = torch.from_numpy(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
    if t.ndim != 2 or t.shape[0] < 2:
        raise UserInputError(
            f"token ids must be (N, L) with N >= 2 texts; got shape {tuple(t.shape)}"
        )
    if t.is_floating_point() or t.dtype == torch.bool:
        raise UserInputError(f"token ids must be integers; got dtype {t.dtype}")
    if t.numel() and int(t.min()) < 0:
        raise UserInputError(f"token ids must be >= 0; got {int(t.min())}")
    return t.long()


def token_rarity(ids: Any, *, pad_id: int = 0, unk_id: int | None = None) -> torch.Tensor:
    """``(N,)`` mean ``log(N / df)`` over each text's distinct tokens (larger: rarer words).

    Args:
        ids: ``(N, L)`` integer token ids, one row per text, padded with ``pad_id``.
        pad_id: the padding id (not a token).
        unk_id: the tokenizer's unknown id, counted as a token held by one text only
            (``log N``); ``None``: an ordinary id.

    Returns:
        ``(N,)`` float scores; a text with no tokens scores 0.

    Example:
        >>> ids = torch.tensor([[2, 3, 0], [2, 3, 0], [2, 3, 0], [7, 8, 9]])
        >>> token_rarity(ids).argmax().item()
        3
    """
    t = _ids(ids)
    n = t.shape[0]
    s, _ = t.sort(dim=1)
    first = torch.ones_like(s, dtype=torch.bool)
    first[:, 1:] = s[:, 1:] != s[:, :-1]
    keep = first & (s != pad_id)
    df = torch.bincount(s[keep], minlength=int(s.max()) + 1).double()
    idf = torch.log(n / df.clamp_min(1.0))
    if unk_id is not None and unk_id < idf.numel():
        idf[unk_id] = math.log(n)
    per = torch.where(keep, idf[s], torch.zeros((), dtype=idf.dtype))
    count = keep.sum(1)
    return (per.sum(1) / count.clamp_min(1)).float()


def find_rare_texts(
    ids: Any,
    *,
    pad_id: int = 0,
    unk_id: int | None = None,
    threshold: float = DATALAB_THRESHOLD,
) -> Outliers:
    """Texts whose :func:`token_rarity` exceeds Datalab's fence ``Q3 + 1.7 IQR``.

    Args:
        ids, pad_id, unk_id: of :func:`token_rarity`.
        threshold: of :func:`~dcloop.health.outliers.fence` (Datalab's 0.37037).

    Returns:
        :class:`~dcloop.health.Outliers` with the rarity as ``score``.
    """
    score = token_rarity(ids, pad_id=pad_id, unk_id=unk_id)
    cutoff = fence(score, threshold=threshold)
    return Outliers(score > cutoff, score, cutoff)
