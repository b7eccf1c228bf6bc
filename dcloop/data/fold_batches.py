"""Fold-grouped, fixed-size batches for the out-of-fold pass."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from torch.utils.data import DataLoader, IterableDataset, Sampler


class FoldBatchSampler(Sampler[list[int]]):
    """Batches of dataset rows that never straddle folds, all of one size.

    Rows are grouped by fold (row order within a fold). Fold k's ``n_k`` rows make
    ``m_k = ceil(n_k / batch_size)`` batches, and every batch of every fold has the same
    size ``b = max_k ceil(n_k / m_k) <= batch_size``: short batches are padded by repeating
    their fold's last row (the OOF buffer write is by index, so a repeat writes the same
    value twice). With near-equal folds the padding is under ``m_k`` rows per fold.

    Under DDP (``num_replicas > 1``) rank ``r`` takes batches ``r, r + W, r + 2W, ...`` of
    that list, cycled so that every rank runs the same number of batches of the same size
    (the epoch-end ``all_gather`` needs equal shapes; the repeats are dropped by index).

    Args:
        folds: ``(N,)`` fold of each dataset row (row = position in the dataset).
        batch_size: the largest batch.
        num_replicas: W, the number of DDP processes.
        rank: this process's rank in ``[0, W)``.

    Attributes:
        batch_folds: fold of each batch this rank yields, in order (host ints: the OOF pass
            picks the replica without asking the device).
        batch_rows: size ``b`` of every batch.

    Example:
        >>> s = FoldBatchSampler(np.array([0, 1, 0, 1, 1]), batch_size=2)
        >>> list(s), s.batch_folds
        ([[0, 2], [1, 3], [4, 4]], [0, 1, 1])
    """

    def __init__(self, folds, batch_size: int, *, num_replicas: int = 1, rank: int = 0) -> None:
        folds = np.asarray(folds)
        if folds.ndim != 1 or folds.size == 0 or not np.issubdtype(folds.dtype, np.integer):
            raise ValueError(f"folds must be a non-empty 1-d integer array; got {folds!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need 0 <= rank < num_replicas; got rank={rank}, {num_replicas=}")
        groups = [np.flatnonzero(folds == k) for k in np.unique(folds)]
        counts = [math.ceil(len(g) / batch_size) for g in groups]
        self.batch_rows = max(math.ceil(len(g) / m) for g, m in zip(groups, counts, strict=True))
        batches: list[tuple[int, list[int]]] = []
        for rows, m in zip(groups, counts, strict=True):
            fold = int(folds[rows[0]])
            padded = np.concatenate([rows, np.full(m * self.batch_rows - len(rows), rows[-1])])
            batches += [(fold, b.tolist()) for b in padded.reshape(m, self.batch_rows)]
        per_rank = math.ceil(len(batches) / num_replicas)
        mine = [
            batches[j % len(batches)] for j in range(rank, per_rank * num_replicas, num_replicas)
        ]
        self.batch_folds = [f for f, _ in mine]
        self._batches = [b for _, b in mine]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches)

    def __len__(self) -> int:
        return len(self._batches)


def fold_grouped_loader(
    loader: DataLoader, folds, *, num_replicas: int = 1, rank: int = 0
) -> DataLoader | None:
    """``loader``'s dataset in :class:`FoldBatchSampler` batches (its batch size, workers and
    collate), or ``None`` where that cannot apply: a loader with a batch sampler of its own,
    an iterable dataset, or a dataset whose length is not ``len(folds)``."""
    ds = loader.dataset
    if (
        loader.batch_size is None
        or isinstance(ds, IterableDataset)
        or not hasattr(ds, "__len__")
        or len(ds) != len(folds)
    ):
        return None
    sampler = FoldBatchSampler(folds, loader.batch_size, num_replicas=num_replicas, rank=rank)
    return DataLoader(
        ds,
        batch_sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        worker_init_fn=loader.worker_init_fn,
        persistent_workers=loader.num_workers > 0,  # the pass runs every epoch: keep them
    )
