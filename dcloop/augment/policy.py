"""The augmentation policy, the sampler that carries it to workers, and the dataset wrapper.

The policy (a level and an oversampling factor per class) lives in the main process and is
changed between epochs. DataLoader workers never read it: the sampler, which runs in the main
process, yields :class:`AugKey` ``(index, level, seed)`` items, and :class:`AugmentedDataset`
in the worker applies that level's transform. So a change made between epochs reaches
persistent workers through the keys of the next epoch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from dcloop._checks import check_float, check_int, check_labels


class AugKey(NamedTuple):
    """What the sampler hands a worker: the sample, its augmentation level, a draw seed."""

    index: int
    level: int
    seed: int


class AugmentPolicy:
    """Per-class augmentation level and oversampling factor, keyed by the given labels.

    Args:
        labels: ``(N,)`` given labels of the training set (row = sample index).
        num_classes: C.
        num_levels: L, the strongest level (levels are ``0..L``; 0 = none).
        base_level: level of every class at the start.

    Attributes:
        class_level: ``(C,)`` int64 numpy array.
        class_weight: ``(C,)`` float64 numpy array, the oversampling factor (1 = as is).
        version: increases on every change (device copies are refreshed from it).
        sample_boost: ``(N,)`` bool or ``None``: samples raised by :meth:`set_samples` (a
            weak group), whatever their class.
    """

    def __init__(self, labels, num_classes: int, *, num_levels: int, base_level: int = 0) -> None:
        self.labels = check_labels(labels, num_classes)
        self.num_classes = int(num_classes)
        self.num_levels = check_int("num_levels", num_levels, minimum=1)
        self._check_level("base_level", base_level)
        self.base_level = int(base_level)
        self.class_level = np.full(self.num_classes, self.base_level, dtype=np.int64)
        self.class_weight = np.ones(self.num_classes, dtype=np.float64)
        self.version = 0
        self.sample_boost: np.ndarray | None = None
        self._boost_level, self._boost_weight = 0, 1.0
        self._device_levels: dict[str, tuple[int, torch.Tensor]] = {}

    def _check_level(self, name: str, level: int) -> None:
        check_int(name, level, minimum=0, maximum=self.num_levels)

    def set_classes(self, classes, *, level: int, weight: float = 1.0) -> None:
        """Give ``classes`` (a ``(C,)`` bool mask) ``level`` and oversampling ``weight``;
        every other class goes back to the base level and weight 1."""
        self._check_level("level", level)
        check_float("weight", weight, low=0, low_open=True, why="the oversampling factor")
        mask = np.asarray(torch.as_tensor(classes).cpu().numpy(), dtype=bool)
        if mask.shape != (self.num_classes,):
            raise ValueError(f"classes must be a ({self.num_classes},) bool mask; got {mask.shape}")
        self.class_level = np.where(mask, int(level), self.base_level).astype(np.int64)
        self.class_weight = np.where(mask, float(weight), 1.0)
        self.version += 1

    def set_samples(self, samples, *, level: int, weight: float = 1.0) -> None:
        """Give the samples of ``samples`` (a ``(N,)`` bool mask, e.g. a weak cluster of the
        embedding from :func:`dcloop.health.underperforming_groups`) at least ``level`` and
        oversampling ``weight``, on top of their class's; an all-False mask clears it."""
        self._check_level("level", level)
        check_float("weight", weight, low=0, low_open=True, why="the oversampling factor")
        mask = np.asarray(torch.as_tensor(samples).cpu().numpy(), dtype=bool)
        if mask.shape != self.labels.shape:
            raise ValueError(f"samples must be a {self.labels.shape} bool mask; got {mask.shape}")
        self.sample_boost = mask if mask.any() else None
        self._boost_level, self._boost_weight = int(level), float(weight)
        self.version += 1

    def set_uniform(self, level: int) -> None:
        """Every class at ``level``, no oversampling."""
        self._check_level("level", level)
        self.base_level = int(level)
        self.set_classes(np.zeros(self.num_classes, dtype=bool), level=level)

    def sample_levels(self) -> np.ndarray:
        """``(N,)`` int64: the level of each sample (its class's level, or the weak group's
        when that is higher)."""
        levels = self.class_level[self.labels]
        if self.sample_boost is not None:
            levels = np.where(self.sample_boost, np.maximum(levels, self._boost_level), levels)
        return levels

    def sample_weights(self) -> np.ndarray:
        """``(N,)`` float64: the oversampling factor of each sample (as the levels)."""
        weights = self.class_weight[self.labels]
        if self.sample_boost is not None:
            weights = np.where(self.sample_boost, np.maximum(weights, self._boost_weight), weights)
        return weights

    def level_tensor(self, device: torch.device | str) -> torch.Tensor:
        """``(N,)`` levels on ``device``, copied once per policy change (host to device only)."""
        key = str(device)
        cached = self._device_levels.get(key)
        if cached is None or cached[0] != self.version:
            t = torch.as_tensor(self.sample_levels())
            if torch.device(device).type == "cuda":  # pinned: the copy does not sync the host
                t = t.pin_memory()
            t = t.to(device, non_blocking=True)
            self._device_levels[key] = (self.version, t)
        return self._device_levels[key][1]


def epoch_counts(weights: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """How often each sample is drawn in an epoch of ``total`` draws, proportional to weights.

    Systematic sampling: sample i is drawn ``floor(c_i)`` or ``ceil(c_i)`` times with
    ``c_i = total * w_i / sum(w)``, unbiased, and the counts sum to exactly ``total``. With
    equal weights every sample is drawn exactly once.
    """
    w = np.asarray(weights, dtype=np.float64)
    expected = w * (total / w.sum())
    if np.allclose(expected, np.round(expected)):
        return np.round(expected).astype(np.int64)
    order = rng.permutation(len(w))
    cum = np.cumsum(expected[order])
    cum[-1] = total
    u = rng.random()
    edges = np.floor(cum + u).astype(np.int64)
    counts_sorted = np.diff(np.concatenate([[math.floor(u)], edges]))
    counts = np.empty_like(counts_sorted)
    counts[order] = counts_sorted
    return counts


class PolicySampler(Sampler[AugKey]):
    """Yields ``AugKey(index, level, seed)`` for one epoch, from the policy as it is now.

    The epoch has ``N`` draws. With no oversampling it is the same permutation as
    :class:`~dcloop.data.EpochShuffleSampler` (``torch.randperm`` seeded by ``seed + epoch``);
    with oversampling each sample appears about ``N * w_i / sum(w)`` times (see
    :func:`epoch_counts`), shuffled. Everything depends only on ``(seed, epoch, policy)``,
    so a resumed run sees the same keys.

    Under DDP (``num_replicas > 1``) every rank computes the same epoch keys, pads them like
    ``DistributedSampler`` to a multiple of ``num_replicas`` and takes positions
    ``rank::num_replicas``, so the ranks' batches together are the one-process batch.

    Args:
        policy: the :class:`AugmentPolicy` (read when each epoch's iteration starts).
        seed: base seed.
        num_replicas: number of processes sharing the epoch.
        rank: this process, in ``[0, num_replicas)``.
    """

    def __init__(
        self, policy: AugmentPolicy, *, seed: int = 0, num_replicas: int = 1, rank: int = 0
    ) -> None:
        self.policy = policy
        self.seed = check_int("seed", seed)
        self.num_replicas = check_int("num_replicas", num_replicas, minimum=1)
        self.rank = check_int("rank", rank, minimum=0, below=self.num_replicas)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose keys the next iteration yields."""
        self.epoch = int(epoch)

    def keys(self) -> list[AugKey]:
        """This rank's keys of this epoch, in order."""
        keys = self._epoch_keys()
        if self.num_replicas == 1:
            return keys
        total = len(self) * self.num_replicas
        keys += (keys * math.ceil(total / len(keys)))[: total - len(keys)]
        return keys[self.rank : total : self.num_replicas]

    def _epoch_keys(self) -> list[AugKey]:
        """The one-process epoch's keys, in order."""
        n = len(self.policy.labels)
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        weights = self.policy.sample_weights()
        if np.all(weights == weights[0]):
            order = torch.randperm(n, generator=g).numpy()
        else:
            rng = np.random.default_rng([self.seed, self.epoch])
            rows = np.repeat(np.arange(n), epoch_counts(weights, n, rng))
            order = rows[torch.randperm(len(rows), generator=g).numpy()]
        levels = self.policy.sample_levels()[order]
        seeds = torch.randint(0, 2**31 - 1, (len(order),), generator=g).numpy()
        return [
            AugKey(int(i), int(v), int(s)) for i, v, s in zip(order, levels, seeds, strict=True)
        ]

    def __iter__(self) -> Iterator[AugKey]:
        return iter(self.keys())

    def __len__(self) -> int:
        return math.ceil(len(self.policy.labels) / self.num_replicas)


Transform = Callable[[torch.Tensor, "int | None"], torch.Tensor]


class AugmentedDataset(Dataset):
    """Wraps an ``(x, y, index)`` dataset; an item key ``(index, level[, seed])`` picks the
    level's transform, applied to ``x`` in the worker.

    Args:
        dataset: the un-augmented training dataset (items ``(x, y, index)``).
        transforms: ``transforms[level]`` is a callable ``(x, seed) -> x`` or ``None`` (no
            augmentation at that level); ``transforms[0]`` is normally ``None``.

    A plain int key means level 0.
    """

    def __init__(self, dataset: Dataset, transforms: Sequence[Transform | None]) -> None:
        if not transforms:
            raise ValueError("transforms must hold one entry per level (index 0 = level 0)")
        self.dataset = dataset
        self.transforms = list(transforms)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def parse_key(self, key) -> tuple[int, int, int | None]:
        """``(index, level, seed)`` of an item key (a plain int: level 0, no seed)."""
        if isinstance(key, (tuple, list)):
            index, level = int(key[0]), int(key[1])
            seed = int(key[2]) if len(key) > 2 else None
        else:
            index, level, seed = int(key), 0, None
        if not 0 <= level < len(self.transforms):
            raise ValueError(
                f"augmentation level must be in [0, {len(self.transforms) - 1}]; "
                f"got {level} for index {index}"
            )
        return index, level, seed

    def __getitem__(self, key) -> tuple[Any, int, int]:
        index, level, seed = self.parse_key(key)
        x, y, i = self.dataset[index]
        fn = self.transforms[level]
        if fn is not None:
            x = fn(x, seed)
        return x, y, i
