import numpy as np
import pytest
import torch

from dcloop.augment import class_recall, weak_classes


def onehot(pred, c):
    return torch.nn.functional.one_hot(torch.as_tensor(pred), c).float() * 0.9 + 0.1 / c


def test_class_recall_counts_only_kept_rows():
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    pred = torch.tensor([0, 0, 1, 1, 1, 0, 2, 2])
    probs = onehot(pred, 3)
    assert class_recall(labels, probs).tolist() == pytest.approx([0.5, 0.5, 1.0])
    keep = torch.tensor([True, True, False, True, True, False, True, True])
    assert class_recall(labels, probs, keep).tolist() == pytest.approx([2 / 3, 1.0, 1.0])
    none_left = class_recall(labels, probs, labels != 2)
    assert torch.isnan(none_left[2])


def test_bottom_k_picks_the_class_the_model_misses():
    # 4 classes, 10 samples each; recall 1.0, 0.9, 0.3, 0.8
    labels = torch.arange(4).repeat_interleave(10)
    pred = labels.clone()
    pred[10:11] = 0  # class 1: 1 miss
    pred[20:27] = 3  # class 2: 7 misses
    pred[30:32] = 0  # class 3: 2 misses
    r = weak_classes(labels, onehot(pred, 4), rule="bottom_k", k=1)
    assert r.recall.tolist() == pytest.approx([1.0, 0.9, 0.3, 0.8])
    assert r.weak.tolist() == [False, False, True, False]
    assert r.score.tolist() == pytest.approx([1.0, 0.9, 0.3, 0.8])  # no flags, no noise
    r2 = weak_classes(labels, onehot(pred, 4), rule="bottom_k", k=2)
    assert r2.weak.nonzero().flatten().tolist() == [2, 3]


def test_noise_rate_and_pruning_enter_the_score():
    labels = torch.arange(4).repeat_interleave(10)
    probs = onehot(labels, 4)  # perfect recall everywhere
    noise = torch.tensor([0.0, 0.5, 0.1, 0.0])
    flags = torch.zeros(40, dtype=torch.bool)
    flags[30:38] = True  # class 3: 2 of 10 left; median left is 10
    r = weak_classes(
        labels, probs, flags=flags, class_noise_rate=noise, rule="threshold", threshold=0.6
    )
    assert r.remaining.tolist() == [10, 10, 10, 2]
    assert r.score.tolist() == pytest.approx([1.0, 0.5, 0.9, 0.2])
    assert r.weak.tolist() == [False, True, False, True]


def test_threshold_and_ties_and_numpy_inputs():
    labels = np.repeat(np.arange(3), 4)
    probs = onehot(labels, 3).numpy()
    r = weak_classes(labels, probs, rule="threshold", threshold=0.5)
    assert not r.weak.any()
    r = weak_classes(labels, probs, rule="bottom_k", k=1)  # all tie: lowest index
    assert r.weak.tolist() == [True, False, False]
    assert weak_classes(labels, probs, k=0).weak.sum() == 0


def test_bad_arguments_name_the_value():
    labels = torch.tensor([0, 1])
    probs = torch.eye(2)
    with pytest.raises(ValueError, match="'worst'"):
        weak_classes(labels, probs, rule="worst")
    with pytest.raises(ValueError, match="k must be"):
        weak_classes(labels, probs, k=3)
    with pytest.raises(ValueError, match="threshold"):
        weak_classes(labels, probs, rule="threshold", threshold=1.5)
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
        weak_classes(torch.tensor([0, 1, 1]), probs)
    with pytest.raises(ValueError, match="class_noise_rate"):
        weak_classes(labels, probs, k=1, class_noise_rate=[0.1, 0.2, 0.3])
