import numpy as np
import pytest
import torch

from dcloop.augment import AugmentedDataset, Augmenter, AugmentPolicy, PolicySampler, epoch_counts
from dcloop.data import EpochShuffleSampler, IndexedTensorDataset


def test_epoch_counts_are_exact_and_proportional():
    rng = np.random.default_rng(0)
    assert epoch_counts(np.ones(7), 7, rng).tolist() == [1] * 7
    w = np.array([1.0] * 8 + [3.0] * 2)  # two samples weighted 3x
    counts = np.array([epoch_counts(w, 10, np.random.default_rng(s)) for s in range(400)])
    assert (counts.sum(1) == 10).all()
    expected = 10 * w / w.sum()  # 0.714..., 2.142...
    assert counts.mean(0) == pytest.approx(expected, abs=0.06)
    assert set(np.unique(counts[:, 8])) <= {2, 3} and set(np.unique(counts[:, 0])) <= {0, 1}


def test_sampler_without_oversampling_matches_the_plain_shuffle():
    labels = np.arange(20) % 4
    policy = AugmentPolicy(labels, 4, num_levels=3, base_level=1)
    sampler, plain = PolicySampler(policy, seed=5), EpochShuffleSampler(20, seed=5)
    for epoch in (0, 3):
        sampler.set_epoch(epoch)
        plain.set_epoch(epoch)
        keys = list(sampler)
        assert [k.index for k in keys] == list(plain)
        assert {k.level for k in keys} == {1}
    assert [k.seed for k in sampler] == [k.seed for k in sampler]  # same epoch, same seeds


def test_policy_change_sets_levels_and_oversamples_the_weak_class():
    labels = np.repeat(np.arange(4), 25)
    policy = AugmentPolicy(labels, 4, num_levels=3, base_level=1)
    policy.set_classes(np.array([False, False, True, False]), level=3, weight=3.0)
    sampler = PolicySampler(policy, seed=0)
    keys = list(sampler)
    assert len(keys) == len(sampler) == 100
    idx = np.array([k.index for k in keys])
    lvl = np.array([k.level for k in keys])
    assert (lvl[labels[idx] == 2] == 3).all() and (lvl[labels[idx] != 2] == 1).all()
    assert (labels[idx] == 2).sum() == 50  # 3x weight: 100 * 75 / 150
    with pytest.raises(ValueError, match=r"level must be an integer in \[0, 3\]; got level=4"):
        policy.set_classes(np.ones(4, bool), level=4)
    with pytest.raises(ValueError, match=r"\(4,\) bool mask"):
        policy.set_classes(np.ones(3, bool), level=2)


def test_ddp_ranks_split_the_one_process_keys():
    labels = np.repeat(np.arange(3), 7)  # N = 21: not a multiple of 2, so rank 1 is padded
    policy = AugmentPolicy(labels, 3, num_levels=3, base_level=1)
    policy.set_classes(np.array([False, True, False]), level=3, weight=2.0)
    one = PolicySampler(policy, seed=3)
    ranks = [PolicySampler(policy, seed=3, num_replicas=2, rank=r) for r in (0, 1)]
    for epoch in (0, 4):
        for s in (one, *ranks):
            s.set_epoch(epoch)
        full = list(one)
        shards = [list(r) for r in ranks]
        assert [len(x) for x in shards] == [11, 11] == [len(r) for r in ranks]
        assert shards[0] == full[0::2]
        assert shards[1] == (full + full[:1])[1::2]
    with pytest.raises(ValueError, match=r"rank must be an integer in \[0, 2\); got rank=2"):
        PolicySampler(policy, num_replicas=2, rank=2)


class Tagged(torch.utils.data.Dataset):
    """x is the index; the transform of level L adds 1000 * L (detects the level)."""

    def __len__(self):
        return 12

    def __getitem__(self, i):
        return torch.tensor([float(i)]), i % 3, i


class AddLevel:
    def __init__(self, level):
        self.level = level

    def __call__(self, x, seed):
        return x + 1000 * self.level


def test_persistent_workers_see_a_policy_change_made_between_epochs():
    labels = np.arange(12) % 3
    policy = AugmentPolicy(labels, 3, num_levels=2, base_level=0)
    ds = AugmentedDataset(Tagged(), [None, AddLevel(1), AddLevel(2)])
    sampler = PolicySampler(policy, seed=0)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=4, sampler=sampler, num_workers=2, persistent_workers=True
    )

    def epoch(e):
        sampler.set_epoch(e)
        xs, ys = zip(*[(b[0].flatten(), b[1]) for b in loader], strict=True)
        return torch.cat(xs), torch.cat(ys)

    x0, _ = epoch(0)
    assert (x0 < 1000).all()  # level 0 everywhere
    workers = loader._iterator._workers if loader._iterator is not None else None
    policy.set_classes(np.array([False, True, False]), level=2)  # between epochs, main process
    x1, y1 = epoch(1)
    assert loader._iterator._workers is workers  # the same persistent worker processes
    assert (x1[y1 == 1] >= 2000).all() and (x1[y1 != 1] < 1000).all()


def test_augmenter_config_and_image_loader(tmp_path):
    with pytest.raises(ValueError, match="'strong'"):
        Augmenter.from_config({"kind": "strong"})
    with pytest.raises(ValueError, match="unknown key"):
        Augmenter.from_config({"kind": "uniform", "lvl": 2})
    assert Augmenter.from_config({"kind": "none"}) is None
    aug = Augmenter.from_config({"kind": "uniform", "level": 2, "p": 1.0, "image_ops": ["rotate"]})
    x = torch.rand(10, 1, 8, 8)
    ds = IndexedTensorDataset(x, np.arange(10) % 2)
    aug.bind(ds, ds.labels, 2)
    batch = next(iter(aug.train_loader(ds, batch_size=10, num_workers=0, seed=0)))
    assert batch[0].shape == (10, 1, 8, 8)
    assert not torch.allclose(batch[0], x[batch[2]])  # rotated
    assert torch.equal(aug.on_batch(batch)[0], batch[0])  # images: nothing on the device
