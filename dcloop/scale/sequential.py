"""Sequential k-fold: fold k is one ordinary Trainer run; shards are merged afterwards."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from torch.utils.data import Subset

from dcloop._checks import check_int
from dcloop.folds import assign_folds


def fold_subsets(dataset, labels, num_folds: int, fold: int, *, seed: int = 0):
    """``(train, held_out)`` subsets of ``dataset`` for fold ``fold`` of ``num_folds``.

    Items keep their global ``index``, so the held-out fold's OOF rows land in the
    right place of the ``[N, C]`` buffer.
    """
    check_int("fold", fold, minimum=0, below=num_folds)
    folds = assign_folds(labels, num_folds, seed=seed)
    return (
        Subset(dataset, np.flatnonzero(folds != fold).tolist()),
        Subset(dataset, np.flatnonzero(folds == fold).tolist()),
    )


def merge_shards(
    shards: Iterable[str | Path | tuple[np.ndarray, np.ndarray]], num_samples: int
) -> np.ndarray:
    """Merge OOF shards into one ``(N, C)`` matrix; every index exactly once.

    Args:
        shards: ``.npz`` paths written by ``OOFCollector.save_shard`` or
            ``(index, probs)`` pairs.
        num_samples: N.

    Raises:
        ValueError: an index is out of range, covered twice, or not covered.
    """
    probs, owner = None, np.full(num_samples, -1)
    for k, shard in enumerate(shards):
        if isinstance(shard, (str, Path)):
            with np.load(shard) as z:
                index, p = z["index"], z["probs"]
        else:
            index, p = shard
        index = np.asarray(index, dtype=np.int64)
        if index.size and (index.min() < 0 or index.max() >= num_samples):
            raise ValueError(
                f"shard {k}: indices must be in [0, {num_samples}); got "
                f"min={index.min()}, max={index.max()}"
            )
        if probs is None:
            probs = np.zeros((num_samples, p.shape[1]), dtype=np.float32)
        twice = index[owner[index] >= 0]
        if twice.size:
            raise ValueError(
                f"shard {k}: {twice.size} indices already covered by another "
                f"shard, e.g. {twice[:5].tolist()}"
            )
        owner[index] = k
        probs[index] = p
    missing = np.flatnonzero(owner < 0)
    if probs is None or missing.size:
        raise ValueError(
            f"{missing.size} of {num_samples} indices are in no shard, e.g. "
            f"{missing[:5].tolist()}: run every fold before merging"
        )
    return probs
