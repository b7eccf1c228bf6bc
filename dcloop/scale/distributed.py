"""DDP helpers: a sharded training order that matches one process, one verdict for all ranks.

Under DDP with ``P`` processes and per-process batch ``B / P``, dcloop trains exactly as
one process with batch ``B`` (up to float summation order) when:

* rank ``r`` takes positions ``r, r + P, ...`` of the one-process epoch order, so the
  union of the ranks' batch ``i`` is the one-process batch ``i``
  (:func:`train_sampler`; Lightning's own sampler wrapper reshuffles instead);
* each replica's weighted loss is normalised by the *global* batch weight
  (``FoldEnsemble`` does it under DDP);
* confident learning runs once, on rank 0, and its verdict is broadcast
  (:func:`broadcast_result`).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, Sampler

from dcloop.cleaning import CLResult
from dcloop.data.sampling import EpochShuffleSampler


class DistributedEpochSampler(DistributedSampler):
    """Rank ``rank``'s share of :class:`EpochShuffleSampler`'s epoch order.

    A ``DistributedSampler`` subclass, so Lightning uses it as it is. Positions
    ``rank::num_replicas`` of the seeded ``(seed, epoch)`` permutation, padded like
    ``DistributedSampler`` when ``N`` is not a multiple of ``num_replicas``.
    """

    def __init__(
        self,
        num_samples: int,
        *,
        seed: int,
        num_replicas: int,
        rank: int,
        inner: Sampler | None = None,
    ) -> None:
        # `inner`: another sampler already sharded for (num_replicas, rank), e.g. the
        # augmentation policy's; by default the plain epoch-seeded shuffle.
        self._inner = inner or EpochShuffleSampler(
            num_samples, seed=seed, num_replicas=num_replicas, rank=rank
        )
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


def train_sampler(num_samples: int, seed: int, trainer=None) -> Sampler[int]:
    """The training sampler: one process's epoch order, sharded when DDP runs.

    Args:
        num_samples: N.
        seed: base seed of the epoch order.
        trainer: the attached ``lightning.Trainer`` (or ``None``).

    Returns:
        ``EpochShuffleSampler`` in one process; ``DistributedEpochSampler`` under DDP.
    """
    world = int(getattr(trainer, "world_size", 1) or 1) if trainer is not None else 1
    if world <= 1:
        return EpochShuffleSampler(num_samples, seed=seed)
    return DistributedEpochSampler(
        num_samples, seed=seed, num_replicas=world, rank=int(trainer.global_rank)
    )


_TENSORS = ("flags", "quality", "suggested", "joint", "noise_matrix", "class_noise_rate")


def broadcast_result(
    result: CLResult | None,
    num_samples: int,
    num_classes: int,
    device: torch.device,
    src: int = 0,
) -> CLResult:
    """Broadcast rank ``src``'s verdict to every rank, tensor by tensor, on ``device``.

    Only rank ``src`` needs ``result``; the others pass ``None``. Tensors travel with
    ``torch.distributed.broadcast`` (NCCL or gloo), not pickled: a pickled CUDA tensor
    would land on rank ``src``'s GPU.

    Args:
        result: the verdict on rank ``src``; ignored elsewhere.
        num_samples, num_classes: N and C (the same on every rank).
        device: this rank's device (``cuda:<local rank>`` with NCCL).
        src: the deciding rank.
    """
    n, c = num_samples, num_classes
    shapes = {
        "flags": ((n,), torch.uint8),
        "quality": ((n,), torch.float32),
        "suggested": ((n,), torch.int64),
        "joint": ((c, c), torch.float32),
        "noise_matrix": ((c, c), torch.float32),
        "class_noise_rate": ((c,), torch.float32),
    }
    mine = dist.get_rank() == src
    out = {}
    for name in _TENSORS:
        shape, dtype = shapes[name]
        if mine:
            t = getattr(result, name).to(device=device, dtype=dtype).contiguous()
        else:
            t = torch.empty(shape, dtype=dtype, device=device)
        dist.broadcast(t, src=src)
        out[name] = t
    rate = torch.tensor([result.noise_rate if mine else 0.0], dtype=torch.float64, device=device)
    dist.broadcast(rate, src=src)
    out["flags"] = out["flags"].bool()
    return CLResult(noise_rate=float(rate.item()), **out)
