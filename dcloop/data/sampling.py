"""A resumable, epoch-seeded shuffle sampler."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochShuffleSampler(Sampler[int]):
    """Shuffles with ``torch.randperm`` seeded by ``seed + epoch``.

    The order of an epoch depends only on ``(seed, epoch)``, so a run resumed at epoch ``e``
    sees the same order as an uninterrupted one. Lightning calls :meth:`set_epoch` at the start
    of each training epoch (also through its ``DistributedSamplerWrapper`` in DDP, which then
    shards this sampler's order; keep ``num_replicas=1`` in that case).

    For manual sharding (``num_replicas > 1``), the permutation is padded like
    ``torch.utils.data.DistributedSampler``: its first indices are repeated until the length is a
    multiple of ``num_replicas``, and rank ``r`` takes ``perm[r::num_replicas]``, so every rank
    gets ``ceil(num_samples / num_replicas)`` indices.

    Args:
        num_samples: Dataset length N (> 0).
        seed: Base seed.
        shuffle: If False, yields ``0..N-1`` in order (still padded/sharded).
        num_replicas: Number of ranks sharing the data.
        rank: This rank, in ``[0, num_replicas)``.
    """

    def __init__(
        self,
        num_samples: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        for name, value in (("num_samples", num_samples), ("num_replicas", num_replicas)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be an int in [0, {num_replicas}), got {rank!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = bool(shuffle)
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose order the next iteration yields."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        self.epoch = epoch

    def _order(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            order = list(range(self.num_samples))
        total = len(self) * self.num_replicas
        pad = total - len(order)
        if pad > 0:
            order += (order * math.ceil(pad / len(order)))[:pad]
        return order[self.rank : total : self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self._order())

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.num_replicas)
