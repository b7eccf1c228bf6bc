from functools import partial

import numpy as np
import pytest
import torch

from dcloop.augment import AugmentPolicy, weak_classes
from dcloop.callbacks import ConfidentLearning, OOFCollector, WeakClasses
from dcloop.models import MLP, FoldEnsemble

from conftest import fast_trainer


def fit(blobs, tmp_path, weak_cb, epochs=3):
    model = FoldEnsemble(partial(MLP, (8,), 3, hidden=(16,)), blobs.labels, num_folds=3)
    cl = ConfidentLearning(warmup_epochs=2)
    trainer = fast_trainer(tmp_path, [OOFCollector(), cl, weak_cb], max_epochs=epochs)
    trainer.fit(model, datamodule=blobs)
    return model, cl, trainer


def test_weak_classes_update_the_policy_after_each_cl_step(blobs, tmp_path):
    policy = AugmentPolicy(blobs.labels, 3, num_levels=3, base_level=1)
    cb = WeakClasses(policy, rule="bottom_k", k=1, level=3, oversample=2.0)
    model, cl, trainer = fit(blobs, tmp_path, cb, epochs=3)
    assert [h["epoch"] for h in cb.history] == [2, 3]  # CL runs from epoch 2 (1-based)
    # the final verdict is the rule applied to the final OOF buffer and CL result
    res = cl.last_result
    expect = weak_classes(
        model.samples.labels,
        trainer.callbacks[0].probs,
        flags=res.flags,
        class_noise_rate=res.class_noise_rate,
        k=1,
    )
    assert cb.weak.tolist() == expect.weak.tolist() and cb.weak.sum() == 1
    weak = int(np.flatnonzero(cb.weak)[0])
    assert policy.class_level.tolist() == [3 if k == weak else 1 for k in range(3)]
    assert policy.class_weight[weak] == 2.0 and policy.class_weight.sum() == 4.0
    assert cb.first_weak[weak] in (2, 3)
    assert set(cb.first_weak.tolist()) <= {-1, 2, 3}  # an epoch of a step, or never
    assert trainer.callback_metrics["weak/num_weak"] == 1.0


def test_state_dict_resumes_the_weak_classes(blobs, tmp_path):
    policy = AugmentPolicy(blobs.labels, 3, num_levels=3, base_level=0)
    cb = WeakClasses(policy, k=2, level=2)
    fit(blobs, tmp_path, cb, epochs=2)
    state = cb.state_dict()
    fresh_policy = AugmentPolicy(blobs.labels, 3, num_levels=3, base_level=0)
    again = WeakClasses(fresh_policy, k=2, level=2)
    again.load_state_dict(state)
    assert again.history == cb.history
    assert again.first_weak.tolist() == cb.first_weak.tolist()
    assert fresh_policy.class_level.tolist() == policy.class_level.tolist()
    assert sorted(np.flatnonzero(fresh_policy.class_level == 2).tolist()) == sorted(
        np.flatnonzero(cb.weak).tolist()
    )
    assert again.state_dict() == state  # including the step count
    old = WeakClasses(k=1)
    old.load_state_dict({})  # an old checkpoint without this callback's state
    assert old.history == [] and old.first_weak is None


def test_order_does_not_matter(blobs, tmp_path):
    """Before or after ConfidentLearning, the rule sees the same verdicts."""
    runs = []
    for first in (True, False):
        torch.manual_seed(0)
        model = FoldEnsemble(partial(MLP, (8,), 3, hidden=(16,)), blobs.labels, num_folds=3)
        policy = AugmentPolicy(blobs.labels, 3, num_levels=3, base_level=1)
        cb, cl = WeakClasses(policy, k=1), ConfidentLearning(warmup_epochs=2)
        order = [cb, cl] if first else [cl, cb]
        fast_trainer(tmp_path / str(first), order, max_epochs=3).fit(model, datamodule=blobs)
        runs.append(cb.history)
    assert runs[0] == runs[1] and [h["epoch"] for h in runs[0]] == [2, 3]


def test_needs_confident_learning_and_a_policy(blobs, tmp_path):
    model = FoldEnsemble(partial(MLP, (8,), 3), blobs.labels, num_folds=3)
    policy = AugmentPolicy(blobs.labels, 3, num_levels=3)
    trainer = fast_trainer(tmp_path, [WeakClasses(policy), OOFCollector()])
    with pytest.raises(ValueError, match="needs a ConfidentLearning"):
        trainer.fit(model, datamodule=blobs)
    trainer = fast_trainer(tmp_path, [OOFCollector(), ConfidentLearning(), WeakClasses()])
    with pytest.raises(ValueError, match="AugmentPolicy"):
        trainer.fit(model, datamodule=blobs)
    with pytest.raises(ValueError, match="'top'"):
        WeakClasses(policy, rule="top")


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"k": -5}, "k must be an integer >= 0; got k=-5"),
        ({"level": -3}, "level must be an integer >= 0; got level=-3"),
        ({"every_n_epochs": 1.5}, "every_n_epochs must be an integer >= 1; got every_n_epochs=1.5"),
        ({"threshold": 7}, r"threshold must be a number in \[0, 1\]; got threshold=7"),
    ],
)
def test_bad_options_fail_at_construction(kwargs, words):
    with pytest.raises(ValueError, match=words):
        WeakClasses(**kwargs)


def test_more_weak_classes_than_classes_fails_before_training(blobs, tmp_path):
    model = FoldEnsemble(partial(MLP, (8,), 3), blobs.labels, num_folds=3)
    policy = AugmentPolicy(blobs.labels, 3, num_levels=3)
    trainer = fast_trainer(
        tmp_path, [OOFCollector(), ConfidentLearning(), WeakClasses(policy, k=4)]
    )
    with pytest.raises(ValueError, match="k=4 weak classes asked for, but there are only 3"):
        trainer.fit(model, datamodule=blobs)


def test_level_and_oversample_come_from_the_augmenter_when_unset(blobs, tmp_path):
    policy = AugmentPolicy(blobs.labels, 3, num_levels=3, base_level=1)
    cb = WeakClasses.from_augment({"kind": "targeted", "weak": {"k": 1}})
    assert cb.level is None and cb.oversample is None and cb.k == 1
    cb.policy = policy
    blobs.augmenter = type("Aug", (), {"policy": policy, "weak_level": 2, "oversample": 3.0})()
    fit(blobs, tmp_path, cb, epochs=2)
    assert (cb.level, cb.oversample) == (2, 3.0)  # the augment config's, not other defaults
    assert WeakClasses.from_augment({"kind": "uniform"}) is None
