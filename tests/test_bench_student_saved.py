"""scripts/bench_student_saved.py: the flags and evidence a diagnosis trains a student on, and
how right the rule's targets are (on a constructed verdict, without a run folder)."""

from pathlib import Path

import pytest
import torch

from dcloop.student import StudentPolicy

from conftest import load_script


@pytest.fixture
def saved():
    """Four samples: 0 and 1 labelled right, 2 and 3 wrong; the run flagged 1 (a false
    positive) and 2 (a hit) and missed 3."""
    mod = load_script("bench_student_saved")
    run = object.__new__(mod.SavedRun)  # no run folder: the attributes the methods read
    run.run = Path("constructed")
    run.table = {
        "labels": torch.tensor([0, 1, 0, 1]),
        "true_labels": torch.tensor([0, 1, 1, 0]),
        "flagged": torch.tensor([False, True, True, False]),
        "weights": torch.ones(4),
    }
    run.evidence = torch.tensor([[0.9, 0.1], [0.7, 0.3], [0.2, 0.8], [0.4, 0.6]])
    run.in_fold = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    return mod, run


def test_flags_come_from_the_run_the_truth_or_the_evidence(saved):
    _, run = saved
    assert run.flags("run").tolist() == [False, True, True, False]
    assert run.flags("truth").tolist() == [False, False, True, True]  # given != true
    assert run.flags("disagree").tolist() == [False, True, True, False]  # argmax != given
    assert run.flags("below0.7").tolist() == [False, True, True, True]  # P(given) < 0.7
    assert run.flags("infold").tolist() == [False, False, True, True]
    # another evidence after a colon, and the union of two sets
    assert run.flags("disagree:infold").tolist() == [False, False, True, True]
    assert run.flags("below0.5:infold").tolist() == [False, False, True, True]
    assert run.flags("run+disagree:infold").tolist() == [False, True, True, True]
    assert run.flags("disagree&disagree:infold").tolist() == [False, False, True, False]
    assert run.flags("truth+disagree&disagree:infold").tolist() == [False, False, True, True]
    with pytest.raises(ValueError, match="expected run, truth, disagree"):
        run.flags("sometimes")


def test_mean_evidence_averages_held_out_and_in_fold(saved):
    _, run = saved
    assert torch.allclose(run.probs("mean"), (run.evidence + run.in_fold) / 2)
    run.in_fold = None
    with pytest.raises(ValueError, match="in_fold_probs.npy"):
        run.probs("infold")


def test_target_quality_scores_the_rule_against_the_true_labels(saved):
    _, run = saved
    # relabel on the run's flags: 1 relabelled to 0 (wrong), 2 to 1 (right), 3 kept wrong.
    q = run.target_quality(StudentPolicy("relabel"))
    assert q["trained_share"] == 1.0
    assert q["target_acc"] == 0.5 and q["flagged_target_acc"] == 0.5
    # drop on perfect flags: the two right labels, all right.
    q = run.target_quality(StudentPolicy("drop"), flags="truth")
    assert q["trained_share"] == 0.5 and q["target_acc"] == 1.0
    assert q["flagged_target_acc"] is None  # no flagged sample is trained on
    assert run.target_quality(StudentPolicy("forward")) == {}  # noise-matrix rows


def test_rule_options_parse_with_flags_and_evidence(saved):
    mod, _ = saved
    assert mod.parse_rule("relabel,flags=truth,evidence=infold,min_confidence=0.3") == {
        "targets": "relabel",
        "flags": "truth",
        "evidence": "infold",
        "min_confidence": 0.3,
    }


def test_a_run_without_truth_has_no_truth_flags_or_target_quality(saved):
    _, run = saved
    run.table["true_labels"] = torch.full((4,), -1)  # how a run's table stores "unknown"
    assert run.true_labels() is None
    assert run.target_quality(StudentPolicy("relabel")) == {}
    with pytest.raises(ValueError, match="needs a run with true labels"):
        run.flags("truth")


def test_knn_and_blend_evidence_vote_with_the_neighbours_labels(saved, tmp_path):
    from types import SimpleNamespace

    import numpy as np

    _, run = saved
    run.run, run.dm = tmp_path, SimpleNamespace(num_classes=2)
    (tmp_path / "data_issues").mkdir()
    feats = np.array([[1.0, 0.0], [0.0, 1.0], [0.1, 1.0], [1.0, 0.1]], np.float32)
    np.save(tmp_path / "data_issues" / "features_train.npy", feats)
    votes = run.knn_probs(k=1)  # each sample's one nearest other sample's label
    assert votes.argmax(1).tolist() == [1, 0, 1, 0]  # the labels of 3, 2, 1, 0
    assert torch.allclose(votes.sum(1), torch.ones(4))
    assert torch.equal(run.probs("knn1"), votes)  # knnK: K neighbours
    assert torch.allclose(run.probs("blend"), (run.evidence + run.knn_probs()) / 2)
    assert run.flags("cl:oof").dtype == torch.bool and run.flags("cl:oof").shape == (4,)
    with pytest.raises(ValueError, match="'knn' or 'blend'"):
        run.probs("neighbours")
