import pytest
import torch

from dcloop.models.losses import gce_loss, sce_loss
from dcloop.student import StudentPolicy, reads_evidence, student_targets, target_quality

LABELS = torch.tensor([0, 1, 2, 1])
FLAGS = torch.tensor([False, True, True, False])
EVIDENCE = torch.tensor([[0.8, 0.1, 0.1], [0.7, 0.2, 0.1], [0.4, 0.3, 0.3], [0.1, 0.8, 0.1]])


def test_relabel_takes_the_evidence_where_sure_and_leaves_out_the_unsure():
    t, w = student_targets(LABELS, EVIDENCE, FLAGS, StudentPolicy("relabel"))
    assert t.argmax(1)[[0, 1, 3]].tolist() == [0, 0, 1]  # row 1 relabelled to 0
    assert w.tolist() == [1.0, 1.0, 0.0, 1.0]  # row 2: evidence 0.4 < 0.5, left out
    torch.testing.assert_close(t.sum(1), torch.ones(4))


def test_soft_trains_flagged_rows_on_the_evidence():
    t, w = student_targets(LABELS, EVIDENCE, FLAGS, StudentPolicy("soft"))
    torch.testing.assert_close(t[1], EVIDENCE[1])
    torch.testing.assert_close(t[2], EVIDENCE[2])
    assert t[0].tolist() == [1.0, 0.0, 0.0] and w.tolist() == [1.0] * 4
    _, w2 = student_targets(LABELS, EVIDENCE, FLAGS, StudentPolicy("soft", drop_unsure=True))
    assert w2.tolist() == [1.0, 1.0, 0.0, 1.0]


def test_mix_distils_the_unflagged_rows():
    t, _ = student_targets(LABELS, EVIDENCE, FLAGS, StudentPolicy("relabel", mix=0.5))
    torch.testing.assert_close(t[0], 0.5 * torch.tensor([1.0, 0, 0]) + 0.5 * EVIDENCE[0])


def test_prune_and_given_keep_the_given_labels():
    weights = torch.tensor([1.0, 0.0, 0.5, 1.0])
    t, w = student_targets(LABELS, EVIDENCE, FLAGS, StudentPolicy("prune"), weights=weights)
    assert t.argmax(1).tolist() == LABELS.tolist() and w.tolist() == weights.tolist()
    t, w = student_targets(LABELS, EVIDENCE, FLAGS, StudentPolicy("given"), weights=weights)
    assert t.argmax(1).tolist() == LABELS.tolist() and w.tolist() == [1.0] * 4


def test_bad_policy_and_shapes():
    with pytest.raises(ValueError, match="student.targets"):
        StudentPolicy("distill")
    with pytest.raises(ValueError, match="student.mix"):
        StudentPolicy(mix=2.0)
    with pytest.raises(ValueError, match="shape"):
        student_targets(LABELS[:3], EVIDENCE, FLAGS, StudentPolicy())


@pytest.mark.parametrize("loss", [gce_loss, sce_loss])
def test_robust_losses_take_ids_or_distributions(loss):
    logits = torch.randn(4, 3)
    hard = loss(logits, LABELS)
    soft = loss(logits, torch.nn.functional.one_hot(LABELS, 3).float())
    assert hard.shape == (4,)
    torch.testing.assert_close(hard, soft)


def test_gce_pulls_less_on_an_unlikely_label_than_cross_entropy():
    logits = torch.tensor([[4.0, 0.0, 0.0]], requires_grad=True)
    wrong = torch.tensor([2])
    (g_ce,) = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, wrong), logits)
    (g_gce,) = torch.autograd.grad(gce_loss(logits, wrong).sum(), logits)
    assert g_gce.abs().sum() < 0.2 * g_ce.abs().sum()


def test_drop_leaves_out_every_flagged_row_whatever_the_loop_did():
    weights = torch.tensor(
        [1.0, 1.0, 0.5, 0.0]
    )  # the loop acted on row 2 only (and 3 is a prior 0)
    t, w = student_targets(LABELS, EVIDENCE, FLAGS, StudentPolicy("drop"), weights=weights)
    assert w.tolist() == [1.0, 0.0, 0.0, 1.0]
    assert t.argmax(1).tolist() == LABELS.tolist()


def test_posterior_trains_every_row_on_the_calibrated_posterior():
    from dcloop.calibrate import calibrate

    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (300,), generator=g)
    evidence = torch.softmax(3 * torch.randn(300, 3, generator=g), 1)
    cal = calibrate(evidence, labels, torch.arange(300) % 5)
    assert cal.posterior.shape == (300, 3)
    torch.testing.assert_close(
        cal.posterior.gather(1, labels[:, None]).squeeze(1), cal.posterior_clean
    )
    flags = cal.posterior_clean < 0.5
    t, w = student_targets(
        labels, evidence, flags, StudentPolicy("posterior"), posterior=cal.posterior
    )
    torch.testing.assert_close(t, cal.posterior)
    assert w.tolist() == [1.0] * 300
    # a flagged row's target puts less than half on its given label, an unflagged one more
    on_given = t.gather(1, labels[:, None]).squeeze(1)
    assert flags.any() and bool((on_given[flags] < 0.5).all() and (on_given[~flags] >= 0.5).all())
    with pytest.raises(ValueError, match="posterior"):
        student_targets(labels, evidence, flags, StudentPolicy("posterior"))


def test_forward_targets_are_the_noise_matrix_rows_of_the_given_labels():
    labels = torch.tensor([0, 1, 1])
    evidence = torch.full((3, 2), 0.5)
    noise = torch.tensor([[0.8, 0.3], [0.2, 0.7]])  # P(given = i | true = j)
    t, w = student_targets(
        labels,
        evidence,
        torch.zeros(3, dtype=torch.bool),
        StudentPolicy("forward"),
        noise_matrix=noise,
    )
    expect = torch.tensor([[0.8, 0.3], [0.2, 0.7], [0.2, 0.7]])
    torch.testing.assert_close(t, expect / expect.sum(1, keepdim=True))
    assert w.tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="forward needs the"):
        student_targets(
            labels, evidence, torch.zeros(3, dtype=torch.bool), StudentPolicy("forward")
        )


def test_forward_nll_is_minus_log_the_given_labels_likelihood_through_the_noise():
    from dcloop.models.losses import forward_nll

    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    noise = torch.tensor([[0.8, 0.3], [0.2, 0.7]])
    given = torch.tensor([0, 0])
    p = logits.softmax(1)
    expect = -torch.log((p * noise[given]).sum(1))
    torch.testing.assert_close(forward_nll(logits, noise[given]), expect)
    # any positive scale of the rows: the same gradient; one-hot rows: cross-entropy
    ce = torch.nn.functional.cross_entropy(logits, given, reduction="none")
    torch.testing.assert_close(forward_nll(logits, given), ce)
    z = logits.clone().requires_grad_(True)
    forward_nll(z, noise[given]).sum().backward()
    g = z.grad.clone()
    z.grad = None
    forward_nll(z, 3 * noise[given]).sum().backward()
    torch.testing.assert_close(z.grad, g)
    # a given label the noise often produces from the other class pulls less towards itself
    z.grad = None
    forward_nll(z, torch.eye(2)[given]).sum().backward()
    assert g[1, 0] > z.grad[1, 0]


def test_relabel_forward_relabels_flags_and_sends_the_rest_through_the_noise_left():
    from dcloop.student import residual_noise_matrix

    labels = torch.tensor([0, 0, 1, 1])
    # rows 0-2 unflagged: row 1 is probably a true 1 given as 0; row 3 flagged
    posterior = torch.tensor([[1.0, 0.0], [0.25, 0.75], [0.0, 1.0], [0.9, 0.1]])
    flags = torch.tensor([False, False, False, True])
    m = residual_noise_matrix(posterior, labels, ~flags)
    # true 0: mass 1.25, all given 0; true 1: mass 1.75, 0.75 given 0 and 1.0 given 1
    torch.testing.assert_close(m, torch.tensor([[1.0, 0.75 / 1.75], [0.0, 1.0 / 1.75]]))
    evidence = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.95, 0.05]])
    t, w = student_targets(
        labels, evidence, flags, StudentPolicy("relabel_forward"), posterior=posterior
    )
    torch.testing.assert_close(t[3], torch.tensor([1.0, 0.0]))  # relabelled to 0
    torch.testing.assert_close(t[2], m[1] / m[1].sum())  # given 1 through the residual noise
    assert w.tolist() == [1.0, 1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="relabel_forward needs"):
        student_targets(labels, evidence, flags, StudentPolicy("relabel_forward"))


def test_auto_chooses_forward_only_where_the_replicas_do_not_fit_the_flagged_labels():
    from dcloop.student import AUTO_FIT_THRESHOLD, auto_rule, flagged_fit

    labels = torch.tensor([0, 1, 2, 0])
    flags = torch.tensor([True, True, True, False])
    weights = torch.tensor([1.0, 1.0, 0.0, 1.0])  # the third flag was not trained on
    fits = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 0]), 3).float()
    assert flagged_fit(fits, labels, flags, weights) == 1.0  # both trained-on flags fitted
    misses = torch.nn.functional.one_hot(torch.tensor([1, 1, 2, 0]), 3).float()
    assert flagged_fit(misses, labels, flags, weights) == 0.5
    assert flagged_fit(fits, labels, torch.zeros(4, dtype=torch.bool), weights) is None
    assert auto_rule(1.0) == "relabel" and auto_rule(0.1) == "forward"
    assert auto_rule(AUTO_FIT_THRESHOLD) == "relabel" and auto_rule(None) == "relabel"
    with pytest.raises(ValueError, match="auto"):
        student_targets(labels, fits, flags, StudentPolicy("auto"))


def test_target_quality_counts_only_the_samples_the_student_trains_on():
    labels, true = torch.tensor([0, 1, 0, 1]), torch.tensor([0, 1, 1, 0])
    ev = torch.tensor([[0.9, 0.1], [0.7, 0.3], [0.2, 0.8], [0.4, 0.6]])
    flags = torch.tensor([False, True, True, False])
    t, w = student_targets(labels, ev, flags, StudentPolicy("relabel"))
    # 0 right, 1 relabelled to 0 (wrong), 2 relabelled to 1 (right), 3 kept wrong.
    assert target_quality(t, w, true) == {"trained_share": 1.0, "targets_right": 0.5}
    t, w = student_targets(labels, ev, labels != true, StudentPolicy("drop"))  # perfect flags
    assert target_quality(t, w, true) == {"trained_share": 0.5, "targets_right": 1.0}
    assert target_quality(t, torch.zeros(4), true) == {"trained_share": 0.0, "targets_right": 0.0}


def test_neighbour_votes_relabel_a_sample_among_the_other_class():
    from dcloop.student import (
        StudentPolicy,
        evidence_source,
        neighbour_votes,
        student_evidence,
    )

    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    x = centres[torch.arange(40) % 2] + 0.05 * torch.randn(40, 3, generator=g)
    labels = torch.arange(40) % 2
    labels[6] = 1  # sits among class 0
    votes = neighbour_votes(x, labels, 2, k=5)
    assert votes.argmax(1)[6] == 0 and torch.allclose(votes.sum(1), torch.ones(40))
    assert float(votes.max()) < 1.0  # smoothed: never one-hot
    oof = torch.full((40, 2), 0.5)
    assert student_evidence(oof, votes, "oof") is oof
    assert student_evidence(oof, None, "knn") is oof  # no votes: the held-out softmax
    torch.testing.assert_close(student_evidence(oof, votes, "knn"), votes)
    torch.testing.assert_close(student_evidence(oof, votes, "blend"), (oof + votes) / 2)
    flags = torch.zeros(40, dtype=torch.bool)
    flags[6] = True
    t, w = student_targets(
        labels, student_evidence(oof, votes, "knn"), flags, StudentPolicy("relabel")
    )
    assert int(t[6].argmax()) == 0 and float(w[6]) == 1.0
    assert evidence_source("auto", 0.02) == "knn" and evidence_source("auto", 0.9) == "oof"
    assert evidence_source("auto", None) == "oof" and evidence_source("blend", 0.02) == "blend"
    with pytest.raises(ValueError, match="student.evidence"):
        StudentPolicy("relabel", evidence="neighbours")


def test_reads_evidence_names_the_rules_whose_targets_depend_on_it():
    for rule in ("relabel", "soft", "posterior", "forward", "relabel_forward"):
        assert reads_evidence(StudentPolicy(rule)), rule
    for rule in ("given", "prune", "drop"):
        assert not reads_evidence(StudentPolicy(rule)), rule
    assert reads_evidence(StudentPolicy("drop", mix=0.3))
    assert reads_evidence(StudentPolicy("prune", unlabelled=1.0))
    assert not reads_evidence(StudentPolicy("given", mix=0.3))
