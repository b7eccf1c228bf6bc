"""Training samplers: torch's ``DistributedSampler`` over ``range(N)``, epoch-seeded.

The order of an epoch depends only on ``(seed, epoch)`` (``torch.randperm`` seeded by
``seed + epoch``), so a run resumed at epoch ``e`` sees the same order as an uninterrupted one,
and under DDP rank ``r`` takes positions ``r::world`` of it, padded as torch pads.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import DistributedSampler, Sampler

from dcloop._checks import check_int


class EpochShuffleSampler(DistributedSampler):
    """``torch.utils.data.DistributedSampler(range(num_samples), shuffle, seed)`` with dcloop's
    argument checks; without a process group (``num_replicas``/``rank`` are given).

    Lightning calls :meth:`set_epoch` at the start of each training epoch and, as this is a
    ``DistributedSampler``, uses it under DDP as it is (no re-wrapping, no re-shuffling).

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
        num_samples = check_int("num_samples", num_samples, minimum=1)
        num_replicas = check_int("num_replicas", num_replicas, minimum=1)
        rank = check_int("rank", rank, minimum=0, below=num_replicas)
        seed = check_int("seed", seed)
        super().__init__(
            range(num_samples),
            num_replicas=num_replicas,
            rank=rank,
            shuffle=bool(shuffle),
            seed=seed,
            drop_last=False,
        )

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose order the next iteration yields."""
        super().set_epoch(check_int("epoch", epoch, minimum=0))


class DistributedEpochSampler(DistributedSampler):
    """A sampler already sharded for ``(num_replicas, rank)`` (e.g. the augmentation policy's
    :class:`~dcloop.augment.policy.PolicySampler`) dressed as a ``DistributedSampler``, so
    Lightning uses it under DDP as it is; :meth:`set_epoch` reaches the inner sampler."""

    def __init__(
        self, num_samples: int, *, seed: int, num_replicas: int, rank: int, inner: Sampler
    ) -> None:
        self._inner = inner
        super().__init__(
            range(num_samples), num_replicas=num_replicas, rank=rank, shuffle=False, seed=seed
        )

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self._inner.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        return iter(self._inner)

    def __len__(self) -> int:
        return len(self._inner)


def train_sampler(num_samples: int, seed: int, trainer=None) -> EpochShuffleSampler:
    """The training sampler: this process's share of the epoch order (all of it without DDP).

    Args:
        num_samples: N.
        seed: base seed of the epoch order.
        trainer: the attached ``lightning.Trainer`` (or ``None``).
    """
    world = int(getattr(trainer, "world_size", 1) or 1) if trainer is not None else 1
    rank = int(trainer.global_rank) if world > 1 else 0
    return EpochShuffleSampler(num_samples, seed=seed, num_replicas=world, rank=rank)
