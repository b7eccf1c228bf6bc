"""Tests for EpochShuffleSampler (torch's DistributedSampler over range(N))."""

import pytest
import torch

from dcloop.data import EpochShuffleSampler


def test_same_epoch_same_order_and_matches_randperm():
    a = EpochShuffleSampler(50, seed=3)
    b = EpochShuffleSampler(50, seed=3)
    a.set_epoch(4)
    b.set_epoch(4)
    assert list(a) == list(b)
    g = torch.Generator().manual_seed(7)
    assert list(a) == torch.randperm(50, generator=g).tolist()
    assert sorted(a) == list(range(50)) and len(a) == 50


def test_epochs_differ_and_resume_matches():
    s = EpochShuffleSampler(100, seed=0)
    orders = []
    for epoch in range(3):
        s.set_epoch(epoch)
        orders.append(list(s))
    assert orders[0] != orders[1] and orders[1] != orders[2] and orders[0] != orders[2]
    resumed = EpochShuffleSampler(100, seed=0)
    resumed.set_epoch(2)
    assert list(resumed) == orders[2]


def test_no_shuffle_is_identity():
    s = EpochShuffleSampler(7, shuffle=False)
    s.set_epoch(5)
    assert list(s) == list(range(7))


@pytest.mark.parametrize("n, replicas", [(10, 3), (12, 4), (2, 3)])
def test_ddp_shards_are_padded_and_cover_everything(n, replicas):
    shards = []
    for rank in range(replicas):
        s = EpochShuffleSampler(n, seed=1, num_replicas=replicas, rank=rank)
        s.set_epoch(2)
        shards.append(list(s))
    per_rank = -(-n // replicas)
    assert all(len(sh) == per_rank for sh in shards)
    flat = [i for sh in shards for i in sh]
    assert set(flat) == set(range(n))
    pad = per_rank * replicas - n
    assert [flat.count(i) for i in range(n)].count(2) == pad  # only the padding repeats
    if n % replicas == 0:
        assert len(set(flat)) == len(flat)  # disjoint when no padding is needed
    # padding repeats the first indices of the epoch's permutation
    full = EpochShuffleSampler(n, seed=1)
    full.set_epoch(2)
    order = list(full)
    interleaved = [shards[r][k] for k in range(per_rank) for r in range(replicas)]
    assert interleaved[:n] == order


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_samples"):
        EpochShuffleSampler(0)
    with pytest.raises(ValueError, match="rank"):
        EpochShuffleSampler(10, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="epoch"):
        EpochShuffleSampler(10).set_epoch(-1)


@pytest.mark.parametrize("n, replicas, shuffle", [(10, 3, True), (12, 4, True), (7, 1, False)])
def test_is_torchs_distributed_sampler_over_range_n(n, replicas, shuffle):
    from torch.utils.data import DistributedSampler

    for rank in range(replicas):
        ours = EpochShuffleSampler(n, seed=5, shuffle=shuffle, num_replicas=replicas, rank=rank)
        ref = DistributedSampler(range(n), replicas, rank, shuffle=shuffle, seed=5)
        for epoch in (0, 3):
            ours.set_epoch(epoch)
            ref.set_epoch(epoch)
            assert list(ours) == list(ref) and len(ours) == len(ref)
