"""Weak groups feed targeted augmentation: AugmentPolicy.set_samples and WeakGroups."""

from functools import partial
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dcloop.augment import AugmentPolicy
from dcloop.callbacks import ConfidentLearning, OOFCollector
from dcloop.callbacks.weak_groups import WeakGroups
from dcloop.models import MLP, FoldEnsemble

from conftest import fast_trainer


def test_policy_set_samples_raises_the_group_on_top_of_its_class():
    labels = np.array([0, 0, 1, 1, 2, 2])
    policy = AugmentPolicy(labels, 3, num_levels=3, base_level=1)
    policy.set_classes(np.array([False, True, False]), level=2, weight=2.0)
    v = policy.version
    policy.set_samples(np.array([True, False, True, False, False, False]), level=3, weight=1.5)
    assert policy.version == v + 1
    assert policy.sample_levels().tolist() == [3, 1, 3, 2, 1, 1]
    assert policy.sample_weights().tolist() == [1.5, 1.0, 2.0, 2.0, 1.0, 1.0]
    policy.set_samples(np.zeros(6, dtype=bool), level=3)  # cleared
    assert policy.sample_levels().tolist() == [1, 1, 2, 2, 1, 1]
    with pytest.raises(ValueError, match=r"samples must be a \(6,\) bool mask"):
        policy.set_samples(np.zeros(5, dtype=bool), level=3)


def _step(n_per=60, seed=0):
    """Two tight clusters per class; the held-out replicas are wrong on one cluster only."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(4, 16, generator=g) * 10
    feats = torch.cat([centres[i] + torch.randn(n_per, 16, generator=g) for i in range(4)])
    labels = torch.tensor([0] * n_per + [0] * n_per + [1] * n_per + [1] * n_per)
    probs = torch.nn.functional.one_hot(labels, 2).float() * 0.9 + 0.05
    weak = torch.arange(n_per, 2 * n_per)  # the second cluster of class 0: all predicted 1
    probs[weak] = probs[weak].flip(1)
    cl = SimpleNamespace(
        last_result=object(), collector=SimpleNamespace(features=feats, probs=probs)
    )
    trainer = SimpleNamespace(current_epoch=3, is_global_zero=True)
    return trainer, SimpleNamespace(samples=SimpleNamespace(labels=labels)), cl, weak


def test_weak_groups_raise_the_weak_cluster_only_not_its_whole_class():
    trainer, module, cl, weak = _step()
    policy = AugmentPolicy(module.samples.labels.numpy(), 2, num_levels=3, base_level=1)
    cb = WeakGroups(policy, level=3, oversample=2.0)
    cb.on_verdict(trainer, module, cl)
    levels = policy.sample_levels()
    expect = np.ones(240, dtype=np.int64)
    expect[weak.numpy()] = 3
    assert levels.tolist() == expect.tolist()  # the rest of class 0 stays at the base level
    assert policy.sample_weights()[weak.numpy()].tolist() == [2.0] * 60
    assert cb.history == [{"epoch": 4, "groups": cb.history[0]["groups"], "samples": 60}]
    section = cb.run_metrics(trainer, module)["weak_groups"]  # metrics.json: what it did
    assert section["history"] == cb.history and section["level"] == 3
    again = WeakGroups(AugmentPolicy(module.samples.labels.numpy(), 2, num_levels=3), level=3)
    again.load_state_dict(cb.state_dict())  # resume: the same samples raised
    assert again.boosted.tolist() == cb.boosted.tolist()


def test_weak_groups_leave_the_policy_alone_without_an_embedding_buffer():
    trainer, module, cl, _ = _step()
    cl.collector.features = None
    policy = AugmentPolicy(module.samples.labels.numpy(), 2, num_levels=3, base_level=1)
    cb = WeakGroups(policy)
    cb.on_verdict(trainer, module, cl)
    assert cb.history == [] and policy.sample_boost is None


def test_weak_groups_run_in_the_loop_and_check_their_options(blobs, tmp_path):
    with pytest.raises(ValueError, match="weak_groups.threshold"):
        WeakGroups(threshold=0.0)
    assert WeakGroups.when(False) is None
    assert isinstance(WeakGroups.when(True, {"kind": "targeted"}), WeakGroups)
    own = WeakGroups.when(True, {"kind": "targeted"}, oversample=4.0, level=None)
    assert own.oversample == 4.0 and own.level is None  # level: the augmenter's, at setup
    with pytest.raises(ValueError, match="needs augment=targeted.*got augment kind 'none'"):
        WeakGroups.when(True, {"kind": "none"})
    policy = AugmentPolicy(blobs.labels, 3, num_levels=3)
    cb = WeakGroups(policy, threshold=1.0)  # any group below the overall accuracy
    model = FoldEnsemble(partial(MLP, (8,), 3, hidden=(16,)), blobs.labels, num_folds=3)
    trainer = fast_trainer(
        tmp_path, [OOFCollector(), ConfidentLearning(warmup_epochs=2), cb], max_epochs=3
    )
    trainer.fit(model, datamodule=blobs)
    assert [h["epoch"] for h in cb.history] == [2, 3]
    assert cb.boosted is not None and cb.boosted.shape == (len(blobs.labels),)
    if cb.boosted.any():
        assert (policy.sample_levels()[cb.boosted] == 3).all()


def test_weak_groups_need_confident_learning(blobs, tmp_path):
    model = FoldEnsemble(partial(MLP, (8,), 3, hidden=(16,)), blobs.labels, num_folds=3)
    with pytest.raises(ValueError, match="needs a ConfidentLearning"):
        fast_trainer(tmp_path, [WeakGroups()], max_epochs=1).fit(model, datamodule=blobs)
