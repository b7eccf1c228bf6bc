"""dcloop.safety: readiness, smoothing, bounds, ramp and guard as plain functions."""

import numpy as np
import pytest
import torch

from dcloop import cl
from dcloop.safety import (
    SafetyPolicy,
    bound_flags,
    confident,
    constant_replicas,
    ema,
    harm_checks,
    never_predicted,
    ramp_weights,
    readiness,
    update_streak,
)

POLICY = SafetyPolicy()


# ------------------------------------------------------------------------------ policy


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("ready", "soon", "ready must be one of"),
        ("smoothing", 1.0, r"smoothing must be a number in \[0, 1\); got smoothing=1.0"),
        (
            "max_class_frac",
            0.0,
            r"max_class_frac must be a number in \(0.0, 1.0\]; got max_class_frac=0.0",
        ),
        ("ramp_steps", 0, "ramp_steps must be an integer >= 1; got ramp_steps=0"),
        ("guard", "yes", "guard must be true or false; got guard='yes'"),
        (
            "min_confidence",
            float("nan"),
            "min_confidence must be a number in .*; got min_confidence=nan",
        ),
    ],
)
def test_policy_names_the_bad_value(key, value, match):
    with pytest.raises(ValueError, match=match):
        SafetyPolicy(**{key: value})


# --------------------------------------------------------------------------- readiness


def ready(history, epoch=None, warmup=1, max_epochs=100, **kw):
    epoch = len(history) if epoch is None else epoch
    return readiness(
        history, epoch=epoch, warmup_epochs=warmup, max_epochs=max_epochs, policy=SafetyPolicy(**kw)
    )


def test_not_ready_while_the_oof_accuracy_still_rises():
    ok, why = ready([0.2, 0.3, 0.4, 0.5])
    assert not ok and "still rising" in why


def test_ready_once_the_oof_accuracy_plateaus():
    ok, why = ready([0.2, 0.5, 0.7, 0.705, 0.708])
    assert ok and "gained +0.008 in 2 epochs" in why


def test_a_slow_steady_rise_is_not_a_plateau():
    # +0.01 an epoch: the best-of-previous rule said "plateau" at once; over 2 epochs it is +0.02.
    ok, _ = ready([0.186, 0.198, 0.211, 0.221])
    assert not ok


def test_warmup_is_a_floor_and_the_schedule_fraction_a_ceiling():
    assert not ready([0.5, 0.5, 0.5], warmup=5)[0]
    ok, why = ready([0.1, 0.2, 0.3, 0.4, 0.5], max_epochs=10)
    assert ok and "0.5 of max_epochs 10" in why
    assert ready([0.1], warmup=1, ready="fixed")[0]


# ---------------------------------------------------------------------------- evidence


def test_ema_averages_held_out_softmax_across_epochs():
    a = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    b = torch.tensor([[0.0, 1.0], [0.5, 0.5]])
    assert torch.equal(ema(None, a, 0.5), a)
    assert torch.equal(ema(a, b, 0.0), b)
    out = ema(a, b, 0.5)
    assert torch.allclose(out, torch.tensor([[0.5, 0.5], [0.5, 0.5]]))
    assert torch.allclose(out.sum(1), torch.ones(2))


# ------------------------------------------------------------------------------ bounds


def weak_model_oof(n_per_class=100, c=3, seed=0):
    """A weak model's OOF matrix: class 0 is mostly predicted as class 1 (its own mistake)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(c), n_per_class)
    probs = rng.dirichlet(np.ones(c) * 5, size=labels.size)
    probs[labels == 0] = rng.dirichlet([1, 6, 1], size=n_per_class)
    return torch.as_tensor(labels), torch.as_tensor(probs, dtype=torch.float32)


def test_todays_rule_empties_a_class_and_the_class_floor_does_not():
    labels, probs = weak_model_oof()
    flags = torch.as_tensor(cl.find_label_issues(labels, probs))
    quality = torch.as_tensor(cl.get_label_quality_scores(labels, probs)).float()
    # Without the bound, confident learning flags nearly all of class 0: pruning empties it.
    assert flags[labels == 0].float().mean() > 0.8
    bounded = bound_flags(flags, quality, labels, 3, max_class_frac=0.5, max_flag_frac=1.0)
    assert bounded[labels == 0].float().mean() <= 0.5
    assert not (bounded & ~flags).any()  # a subset
    # The flags kept are the worst (lowest quality) of the class.
    kept_q = quality[bounded & (labels == 0)]
    dropped_q = quality[flags & ~bounded & (labels == 0)]
    assert kept_q.max() <= dropped_q.min()


def test_total_bound():
    labels = torch.arange(10) % 2
    flags = torch.ones(10, dtype=torch.bool)
    quality = torch.linspace(0, 0.9, 10)
    out = bound_flags(flags, quality, labels, 2, max_class_frac=1.0, max_flag_frac=0.3)
    assert out.sum() == 3 and out[:3].all()


def test_weak_predictions_are_flagged_but_not_acted_on():
    flags = torch.tensor([True, True, False])
    evidence = torch.tensor([[0.3, 0.35, 0.35], [0.05, 0.9, 0.05], [0.9, 0.05, 0.05]])
    assert confident(flags, evidence, 0.5).tolist() == [False, True, False]
    assert torch.equal(confident(flags, evidence, 0.0), flags)


# -------------------------------------------------------------------------------- ramp


def test_prune_ramps_down_and_a_cleared_sample_comes_back():
    streak = torch.zeros(2, dtype=torch.long)
    target = torch.zeros(2)
    weights = []
    for flags in ([True, True], [True, False], [True, True], [False, True]):
        f = torch.tensor(flags)
        streak = update_streak(streak, f)
        weights.append(ramp_weights(f, streak, target, ramp_steps=2).tolist())
    assert weights == [[0.5, 0.5], [0.0, 1.0], [0.0, 0.5], [1.0, 0.0]]


def test_ramp_of_one_step_is_the_action_at_once():
    f = torch.tensor([True, False])
    out = ramp_weights(f, torch.tensor([1, 0]), torch.tensor([0.2, 0.2]), ramp_steps=1)
    assert torch.allclose(out, torch.tensor([0.2, 1.0]))


# ------------------------------------------------------------------------------- guard


def test_never_predicted_and_constant_replicas():
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    folds = torch.tensor([0, 0, 0, 1, 1, 1])
    probs = torch.tensor(
        [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1]]  # replica 0: varied, never class 2
        + [[0.2, 0.7, 0.1]] * 3  # replica 1: the same output for every input
    )
    assert never_predicted(probs, labels, 3) == [2]
    assert constant_replicas(probs, folds, 2) == [1]


def test_harm_checks_name_each_problem():
    labels = torch.arange(6) % 3
    folds = torch.arange(6) % 2
    probs = torch.eye(3)[labels] * 0.9 + 0.1 / 3
    common = dict(probs=probs, labels=labels, folds=folds, num_classes=3, num_folds=2)
    assert (
        harm_checks(
            **common,
            noise_rate=0.2,
            previous_noise_rate=0.2,
            val_acc=0.9,
            best_val_before=0.9,
            policy=POLICY,
        )
        == []
    )
    problems = harm_checks(
        **common,
        noise_rate=0.5,
        previous_noise_rate=0.2,
        val_acc=0.8,
        best_val_before=0.9,
        policy=POLICY,
    )
    assert len(problems) == 2
    assert "noise rate jumped from 0.200 to 0.500" in problems[0]
    assert "validation accuracy 0.800 fell below its best before cleaning, 0.900" in problems[1]


def test_cleaning_policy_is_validated_once_and_frozen():
    import dataclasses

    from dcloop.safety import CleaningPolicy, action_weights

    with pytest.raises(ValueError, match=r"action must be one of \['prune', 'downweight'"):
        CleaningPolicy(action="drop")
    with pytest.raises(
        ValueError, match=r"downweight_floor must be a number in \[0, 1\]; got downweight_floor=2.0"
    ):
        CleaningPolicy(downweight_floor=2.0)
    policy = CleaningPolicy(action="downweight", downweight_floor=0.2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.action = "prune"
    flags, quality = torch.tensor([True, False, True]), torch.tensor([0.05, 0.9, 0.6])
    expect = action_weights(flags, quality, action="downweight", floor=0.2)
    assert torch.equal(policy.weights(flags, quality), expect)
    assert expect.tolist() == pytest.approx([0.2, 1.0, 0.6])


def test_sample_table_apply_records_the_verdict_and_keeps_prior_weights():
    from dcloop.state import SampleTable

    table = SampleTable(torch.tensor([0, 1, 0, 1]), torch.tensor([0, 0, 1, 1]))
    table.prior_weights.copy_(torch.tensor([1.0, 0.5, 1.0, 1.0]))  # a label file's weights
    result = cl.verdict(
        torch.tensor([0, 1, 0, 1]), torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.1, 0.9]])
    )
    table.apply(result, 3, torch.tensor([1.0, 0.0, 1.0, 1.0]))
    assert table.weights.tolist() == [1.0, 0.0, 1.0, 1.0]
    table.apply(result, 4, torch.ones(4))
    assert table.weights.tolist() == [1.0, 0.5, 1.0, 1.0]  # the prior stays a factor
    assert torch.equal(table.flagged, result.flags) and torch.equal(
        table.suggested, result.suggested
    )
    table.apply(result, -1)  # outside the loop: recorded, weights as they were
    assert table.weights.tolist() == [1.0, 0.5, 1.0, 1.0]


def test_the_val_drop_tolerance_grows_on_a_small_validation_set():
    from dcloop.safety import val_drop_tolerance

    assert val_drop_tolerance(0.28, 500, 0.03) == pytest.approx(0.0602, abs=1e-3)
    assert val_drop_tolerance(0.9, 10_000, 0.03) == 0.03  # large set: the floor
    assert val_drop_tolerance(0.28, None, 0.03) == 0.03
    # CIFAR-10N worst, 500 validation images: 0.248 after a best of 0.288 is not harm
    kwargs = dict(
        probs=torch.full((4, 2), 0.5),
        labels=torch.tensor([0, 1, 0, 1]),
        folds=torch.tensor([0, 0, 1, 1]),
        num_classes=2,
        num_folds=2,
        noise_rate=0.1,
        previous_noise_rate=None,
        val_acc=0.248,
        best_val_before=0.288,
        policy=SafetyPolicy(),
    )
    assert not any("validation" in p for p in harm_checks(**kwargs, val_size=500))
    assert any("by more than 0.03" in p for p in harm_checks(**kwargs))
