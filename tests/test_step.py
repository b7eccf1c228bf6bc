"""dcloop.step: the cleaning step as one pure function, without a Trainer; the sequential
merge runs it (confidence gate, ramp, guard) as the fold-parallel loop does."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dcloop.scale.merge import STEP_STATE, merge_round, read_step_state
from dcloop.state import SampleTable
from dcloop.step import Evidence, StepPolicy, StepState, clean_step

C, K = 3, 2


def blobs(n=60, noisy=(0, 1, 2, 3), weak=(2, 3), seed=0):
    """Labels 0..C-1 in turn, OOF softmax confident in the label except at ``noisy`` rows
    (confident in another class, except at ``weak`` rows: barely)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % C
    truth = labels.clone()
    probs = torch.full((n, C), 0.05)
    probs[torch.arange(n), labels] = 0.9
    for i in noisy:
        other = (int(labels[i]) + 1) % C
        truth[i] = other
        probs[i] = 0.15 if i in weak else 0.05
        probs[i, other] = 0.45 if i in weak else 0.9
        probs[i, labels[i]] = 0.4 if i in weak else 0.05
    probs = probs + 0.01 * torch.rand(n, C, generator=g)
    probs = probs / probs.sum(1, keepdim=True)
    folds = torch.arange(n) % K
    return labels, truth, folds, probs


def flagged_everywhere():
    """A policy whose verdict flags every noisy row (no bounds in the way)."""
    return StepPolicy.from_options(
        filter_by="predicted_neq_given", max_class_frac=1.0, max_flag_frac=1.0
    )


def test_gate_and_ramp_act_on_confident_flags_step_by_step():
    labels, _, folds, probs = blobs()
    policy = flagged_everywhere()  # defaults: min_confidence 0.5, ramp_steps 2, prune
    state = StepState.initial(labels, folds)
    s1, r1 = clean_step(state, Evidence(probs, epoch=1), policy)
    assert r1.result.flags[[0, 1]].all()
    # rows 0, 1: confident -> half way at the first step; rows 2, 3: the evidence gives the
    # suggested label < 0.5 -> flagged, not acted on (the gate)
    assert r1.acted.tolist()[:4] == [True, True, False, False]
    assert s1.weights[:4].tolist() == [0.5, 0.5, 1.0, 1.0]
    assert (s1.weights[4:] == 1).all() and s1.start_epoch == 1
    s2, r2 = clean_step(s1, Evidence(probs, epoch=2), policy)
    assert s2.weights[:4].tolist() == [0.0, 0.0, 1.0, 1.0]  # the action's full weight
    assert s2.flag_streak[:2].tolist() == [2, 2] and s2.start_epoch == 1
    # a row the next verdict clears is back at once
    cleared = probs.clone()
    cleared[0] = torch.nn.functional.one_hot(labels[0], C).float() * 0.85 + 0.05
    s3, _ = clean_step(s2, Evidence(cleared, epoch=3), policy)
    assert s3.weights[0] == 1 and s3.flag_streak[0] == 0 and s3.weights[1] == 0
    # the input state is not modified
    assert (state.weights == 1).all() and (state.flag_streak == 0).all()
    assert s1.weights[0] == 0.5 and s1.flag_streak[0] == 1


def test_given_verdict_is_bounded_on_a_copy_and_prior_weights_multiply():
    labels, _, folds, probs = blobs()
    policy = StepPolicy.from_options(
        filter_by="predicted_neq_given", max_class_frac=0.01, ramp_steps=1, min_confidence=0
    )
    verdict = policy.cleaning.verdict(labels, probs)
    before = verdict.flags.clone()
    prior = torch.full((len(labels),), 0.5)
    state = StepState.initial(labels, folds, prior_weights=prior)
    new, report = clean_step(state, Evidence(probs, 1), policy, verdict=verdict)
    assert torch.equal(verdict.flags, before)  # the caller's verdict stays as it was
    assert report.num_flagged_unbounded == int(before.sum()) == 4
    assert int(report.result.flags.sum()) == 0  # floor(20 * 0.01) = 0 per class
    assert (new.weights == 0.5).all()  # unflagged: 1 x the label file's 0.5


def without_class(probs, c):
    """``probs`` with class ``c`` predicted for no sample (the guard's dead class)."""
    dead = probs.clone()
    dead[:, c] = 0.0
    return dead / dead.sum(1, keepdim=True)


def test_harm_restores_weights_pauses_then_stops():
    labels, _, folds, probs = blobs()
    policy = StepPolicy.from_options(
        filter_by="predicted_neq_given",
        max_class_frac=1.0,
        max_flag_frac=1.0,
        guard_pause=1,
        guard_max_backoffs=2,
        guard_patience=1,
    )
    s1, _ = clean_step(StepState.initial(labels, folds), Evidence(probs, 1), policy)
    assert s1.weights[0] == 0.5
    dead = without_class(probs, 2)  # class 2 predicted for no sample: harm
    s2, r2 = clean_step(s1, Evidence(probs, 2, current=dead), policy)
    assert r2.problems and "class(es) [2]" in r2.problems[0]
    assert r2.event["action"] == "weights restored; cleaning paused until epoch 3"
    assert (s2.weights == 1).all() and (s2.flag_streak == 0).all()
    assert (s2.backoffs, s2.paused_until) == (1, 3)
    # in the pause: a verdict, no weight changes
    s3, r3 = clean_step(s2, Evidence(probs, 3), policy)
    assert r3.skipped == "paused until 3 (harm)" and int(r3.result.flags.sum()) == 4
    assert (s3.weights == 1).all() and not r3.acted.any()
    # after the pause, a dead class while nothing is lowered is the model's: not a back-off
    s3b, r3b = clean_step(s3, Evidence(probs, 4, current=dead), policy)
    assert r3b.skipped.startswith("not ready: class(es) [2]") and s3b.backoffs == 1
    assert r3b.event["action"].startswith("nothing acted yet") and (s3b.weights == 1).all()
    s3c, _ = clean_step(s3b, Evidence(probs, 5), policy)  # acts again
    assert s3c.weights[0] == 0.5
    s4, r4 = clean_step(s3c, Evidence(probs, 6, current=dead), policy)
    assert r4.event["action"].endswith("cleaning stopped for the rest of the run")
    s5, r5 = clean_step(s4, Evidence(probs, 9), policy)
    assert r5.skipped == "stopped (repeated harm)" and (s5.weights == 1).all()


def test_harm_seen_once_holds_the_weights_and_backs_off_when_seen_again():
    """guard_patience=2: one step with harm holds the weights as they are (no further
    lowering, no back-off); a clean step after it carries on; harm on two steps in a row
    backs off. A constant replica backs off at once. (The default, 1, backs off at once.)"""
    labels, _, folds, probs = blobs()
    assert StepPolicy().safety.guard_patience == 1
    policy = StepPolicy.from_options(
        filter_by="predicted_neq_given",
        max_class_frac=1.0,
        max_flag_frac=1.0,
        ramp_steps=3,
        guard_patience=2,
    )
    dead = without_class(probs, 2)  # class 2 predicted for no sample
    s1, _ = clean_step(StepState.initial(labels, folds), Evidence(probs, 1), policy)
    lowered = s1.weights.clone()
    assert (lowered < 1).any()
    s2, r2 = clean_step(s1, Evidence(probs, 2, current=dead), policy)
    assert r2.event["action"].startswith("holding the weights (harm seen 1 step(s)")
    assert r2.skipped.startswith("holding: class(es) [2]") and not r2.acted.any()
    assert torch.equal(s2.weights, lowered) and torch.equal(s2.flag_streak, s1.flag_streak)
    assert (s2.backoffs, s2.harm_streak) == (0, 1)
    s3, r3 = clean_step(s2, Evidence(probs, 3), policy)  # gone: carries on, lowers further
    assert r3.event is None and s3.harm_streak == 0 and (s3.weights < lowered).any()
    s4, _ = clean_step(s3, Evidence(probs, 4, current=dead), policy)
    s5, r5 = clean_step(s4, Evidence(probs, 5, current=dead), policy)  # twice in a row
    assert r5.event["action"].startswith("weights restored") and (s5.weights == 1).all()
    assert (s5.backoffs, s5.harm_streak) == (1, 0)
    flat = probs.clone()
    flat[folds == 0] = 1.0 / probs.shape[1]  # replica 0 says the same for every input
    s6, r6 = clean_step(s3, Evidence(probs, 6, current=flat), policy)
    assert "replica(s) [0]" in " ".join(r6.problems) and s6.backoffs == 1


def test_detect_reports_harm_without_backing_off():
    labels, _, folds, probs = blobs()
    policy = StepPolicy.from_options(action="detect")
    dead = without_class(probs, 1)
    new, report = clean_step(
        StepState.initial(labels, folds), Evidence(probs, 1, current=dead), policy
    )
    assert report.event["action"].startswith("reported only")
    assert new.backoffs == 0 and new.paused_until == -1 and new.start_epoch is None


def test_noise_jump_and_val_drop_count_only_once_cleaning_started():
    labels, _, folds, probs = blobs()
    policy = StepPolicy.from_options(guard_noise_jump=0.01)
    state = StepState.initial(labels, folds)
    jumped = StepState.of_table(_table(labels, folds), noise_rate=0.0)
    _, before = clean_step(jumped, Evidence(probs, 1, val_acc=0.1, best_val_before=0.9), policy)
    assert before.problems == []  # nothing acted yet: no previous rate, no val baseline
    started = StepState.of_table(_table(labels, folds), noise_rate=0.0, start_epoch=1)
    _, same = clean_step(started, Evidence(probs, 2, val_acc=0.1, best_val_before=0.9), policy)
    assert same.problems == []  # a step ran but lowered no weight: nothing to blame
    started.weights[0] = 0.5
    _, after = clean_step(started, Evidence(probs, 2, val_acc=0.1, best_val_before=0.9), policy)
    assert any("jumped" in p for p in after.problems)
    assert any("validation accuracy 0.100" in p for p in after.problems)
    assert state.noise_rate is None
    # a calibrated estimate may rise as the replicas learn: only the val drop counts there
    calibrated = StepPolicy.from_options(guard_noise_jump=0.01, calibrate="posterior")
    _, cal = clean_step(started, Evidence(probs, 2, val_acc=0.1, best_val_before=0.9), calibrated)
    assert not any("jumped" in p for p in cal.problems)
    assert any("validation accuracy 0.100" in p for p in cal.problems)


def test_a_dead_class_before_anything_acted_is_not_a_back_off():
    labels, _, folds, probs = blobs()
    policy = StepPolicy.from_options(filter_by="predicted_neq_given", guard_max_backoffs=1)
    dead = without_class(probs, 2)
    state = StepState.initial(labels, folds)
    new, report = clean_step(state, Evidence(probs, 1, current=dead), policy)
    assert report.skipped.startswith("not ready: class(es) [2]")
    assert new.backoffs == 0 and new.paused_until == -1 and not report.acted.any()
    new, report = clean_step(new, Evidence(probs, 2), policy)  # the next step acts
    assert report.skipped is None and report.acted.any()


def _table(labels, folds):
    return SampleTable(labels, folds)


def test_step_row_has_detection_scores_with_the_truth():
    labels, truth, folds, probs = blobs()
    new, report = clean_step(StepState.initial(labels, folds), Evidence(probs, 1), StepPolicy())
    row = report.row(new, truth)
    assert row["epoch"] == 1 and row["num_acted"] == int(report.acted.sum())
    assert {"precision", "recall", "f1", "auroc", "noise_rate_est", "weight_mean"} <= set(row)
    assert "precision" not in report.row(new, None)


def test_policy_from_options_checks_once_and_round_trips():
    policy = StepPolicy.from_options({"action": "downweight", "warmup_epochs": 2}, ramp_steps=3)
    assert policy.cleaning.action == "downweight" and policy.safety.ramp_steps == 3
    assert StepPolicy.from_options(policy.as_options()) == policy
    with pytest.raises(ValueError, match=r"unknown confident-learning option\(s\) \['smoothin'\]"):
        StepPolicy.from_options(smoothin=0.5)
    with pytest.raises(ValueError, match="warmup_epochs must be >= 1; got 0"):
        StepPolicy.from_options(warmup_epochs=0)
    with pytest.raises(ValueError, match="action must be one of"):
        StepPolicy.from_options(action="delete")


# ------------------------------------------------------------------ the sequential merge


def _round(work: Path, rnd: int, labels, truth, folds, probs, **cl) -> Path:
    """A round folder as K fold runs leave it (meta, shards, test predictions)."""
    d = work / f"round_{rnd}"
    d.mkdir(parents=True)
    n = len(labels)
    meta = {
        "num_samples": n,
        "num_classes": C,
        "num_folds": K,
        "round": rnd,
        "seed": 0,
        "source": "blobs",
        "class_names": [str(c) for c in range(C)],
        "cl": cl,
        "noise_injected": None,
    }
    (d / "meta.json").write_text(json.dumps(meta))
    np.savez(
        d / "meta.npz",
        labels=labels.numpy(),
        true_labels=truth.numpy(),
        folds=folds.numpy(),
        test_labels=np.arange(6) % C,
        sources=np.array([f"s{i}" for i in range(n)]),
        confirmed=np.zeros(n, bool),
        prior_weights=np.ones(n, np.float32),
    )
    for k in range(K):
        index = np.flatnonzero(folds.numpy() == k)
        np.savez(d / f"oof_fold{k}.npz", index=index, probs=probs.numpy()[index])
        np.savez(d / f"test_fold{k}.npz", probs=np.eye(C)[np.arange(6) % C])
        (d / f"fold{k}.json").write_text(json.dumps({"fold": k, "test_accuracy": 1.0}))
    return d


def test_merge_applies_the_gate_and_the_ramp_as_the_loop_does(tmp_path):
    labels, truth, folds, probs = blobs()
    cl = {"filter_by": "predicted_neq_given", "max_class_frac": 1.0, "max_flag_frac": 1.0}
    d0 = _round(tmp_path, 0, labels, truth, folds, probs, **cl)
    m0 = merge_round(d0, device="cpu")
    policy = StepPolicy.from_options(cl)
    loop1, _ = clean_step(StepState.initial(labels, folds), Evidence(probs, 0), policy)
    s0 = np.load(d0 / STEP_STATE)
    # the weights the merge leaves for round 1 are the loop's: gate (rows 2, 3 flagged but
    # not acted on) and the ramp's first step (0.5), not the action's 0 at once
    np.testing.assert_array_equal(s0["weights"], loop1.weights.numpy())
    assert s0["weights"][:4].tolist() == [0.5, 0.5, 1.0, 1.0]
    assert m0["history"][0]["num_acted"] == 2 and m0["cleaning"]["mode"] == "sequential"
    assert m0["cleaning"]["num_flagged"] == 4 and m0["detection"]["precision"] == 1.0
    # round 1 reads round 0's state: the same rows reach the action's weight
    d1 = _round(tmp_path, 1, labels, truth, folds, probs, **cl)
    merge_round(d1, device="cpu")
    loop2, _ = clean_step(loop1, Evidence(probs, 1), policy)
    s1 = read_step_state(d1, SampleTable(labels, folds))
    assert torch.equal(s1.weights, loop2.weights) and s1.weights[:2].tolist() == [0.0, 0.0]
    assert torch.equal(s1.flag_streak, loop2.flag_streak) and s1.start_epoch == 0


def test_merge_guard_backs_off_on_a_dead_class(tmp_path):
    labels, truth, folds, probs = blobs()
    dead = without_class(probs, 2)
    d = _round(tmp_path, 0, labels, truth, folds, dead)
    metrics = merge_round(d, device="cpu")
    assert metrics["warnings"] and metrics["warnings"][0].startswith("round 0: class(es) [2]")
    assert metrics["safety"]["backoffs"] == 0  # nothing acted yet: the model's, not a back-off
    assert metrics["safety"]["skipped"].startswith("not ready: class(es) [2]")
    assert (np.load(d / STEP_STATE)["weights"] == 1).all()


def test_a_step_state_of_another_size_is_an_error(tmp_path):
    labels, truth, folds, probs = blobs()
    d = _round(tmp_path, 0, labels, truth, folds, probs)
    merge_round(d, device="cpu")
    with pytest.raises(ValueError, match=r"step_state.npz: holds 60 samples, this round 30"):
        read_step_state(d, SampleTable(labels[:30], folds[:30]))


def test_the_step_state_file_keeps_the_harm_streak(tmp_path):
    """guard_patience across sequential rounds: the merge's step_state.npz carries the harm
    streak to the next round (an older file without it reads as 0)."""
    from dcloop.scale.merge import write_step_state

    labels, _, folds, _ = blobs()
    state = dataclasses.replace(StepState.initial(labels, folds), harm_streak=1)
    write_step_state(tmp_path / STEP_STATE, state)
    assert read_step_state(tmp_path, SampleTable(labels, folds)).harm_streak == 1
    z = dict(np.load(tmp_path / STEP_STATE))
    del z["harm_streak"]
    np.savez(tmp_path / STEP_STATE, **z)
    assert read_step_state(tmp_path, SampleTable(labels, folds)).harm_streak == 0
