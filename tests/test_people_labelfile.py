"""data.labels: a label file replaces the given labels; confirmed rows are never flagged."""

from functools import partial

import numpy as np
import pandas as pd
import pytest
import torch

from dcloop.callbacks import ConfidentLearning, OOFCollector
from dcloop.cl import verdict
from dcloop.data import LabelNoiseDataModule
from dcloop.data.labelfile import attach_label_file, read_label_file
from dcloop.models import MLP, FoldEnsemble

from conftest import fast_trainer

NOISE = {"kind": "symmetric", "rate": 0.2}


def digits(labels=None):
    dm = LabelNoiseDataModule("digits", noise=NOISE, seed=0, labels=labels)
    dm.setup()
    return dm


def test_label_file_replaces_given_labels_and_keeps_truth(tmp_path):
    ref = digits()
    noisy = np.flatnonzero(ref.is_noisy)[:5]
    rows = pd.DataFrame(
        {
            "index": noisy,
            "source": [ref.source_of(i) for i in noisy],
            "label": ref.true_labels[noisy],  # people fixed five injected errors
            "status": ["corrected", "corrected", "confirmed", "consensus", "unchanged"],
            "weight": [1.0, 0.5, 1.0, 0.25, 1.0],
        }
    )
    rows.to_csv(tmp_path / "l.csv", index=False)
    dm = digits(tmp_path / "l.csv")
    assert (dm.given_labels[noisy] == ref.true_labels[noisy]).all()
    others = np.setdiff1d(np.arange(dm.num_train), noisy)
    np.testing.assert_array_equal(dm.given_labels[others], ref.given_labels[others])
    np.testing.assert_array_equal(dm.true_labels, ref.true_labels)  # truth stays known
    assert dm.has_ground_truth and dm.is_noisy.sum() == ref.is_noisy.sum() - 5
    assert (dm.train_dataset.labels == dm.given_labels).all()  # what the loaders serve
    over = dm.label_override
    assert over.num_changed == 5 and set(over.rows) == set(noisy)
    assert over.confirmed[noisy].tolist() == [True, True, True, False, False]
    assert over.confirmed.sum() == 3
    assert over.weights[noisy].tolist() == [1.0, 0.5, 1.0, 0.25, 1.0]
    assert over.weights.sum() == pytest.approx(dm.num_train - 1.25)


def test_class_names_are_accepted_and_bad_files_are_named(tmp_path):
    labels, names = np.array([0, 1, 2, 1]), ["cat", "dog", "eel"]
    p = tmp_path / "l.csv"
    p.write_text("index,label\n0,eel\n3,0\n")
    assert read_label_file(p, labels, names).labels.tolist() == [2, 1, 2, 0]
    cases = {
        "index,label\n0,fox\n": "unknown label.*'fox'",
        "index,label\n7,1\n": r"unknown id.*7.*indices 0\.\.3",
        "index,label\n1,1\n1,2\n": "duplicate id.*1",
        "row,label\n1,1\n": "missing column.*'index'",
        "index,label,weight\n1,1,2.0\n": r"weight must be a number in \[0, 1\].*index 1 has '2.0'",
        "index,label,weight\n1,1,abc\n": "weight must be a number.*index 1 has 'abc'",
        "index,label,status\n1,1,maybe\n": "unknown status 'maybe'",
        "index,label,source\n1,1,b.png\n": "source mismatch.*'b.png'.*'x1'",
        "index,label\n1,\n": "empty label for index 1",
    }
    for text, msg in cases.items():
        p.write_text(text)
        with pytest.raises(ValueError, match=msg):
            read_label_file(p, labels, names, sources=[f"x{i}" for i in range(4)])
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_label_file(tmp_path / "nope.csv", labels, names)


def test_datamodule_rejects_a_label_file_of_other_data(tmp_path):
    pd.DataFrame({"index": [0], "label": [1], "source": ["digits:99999"]}).to_csv(
        tmp_path / "l.csv", index=False
    )
    with pytest.raises(ValueError, match="source mismatch.*digits:99999"):
        digits(tmp_path / "l.csv")


def test_confident_learning_never_flags_confirmed_rows():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (300,), generator=g)
    true = labels.clone()
    true[:40] = (labels[:40] + 1) % 3  # 40 wrong labels, the model knows the truth
    probs = torch.full((300, 3), 0.05)
    probs[torch.arange(300), true] = 0.9
    free = verdict(labels, probs)
    assert free.flags[:40].all() and not free.flags[40:].any()
    confirmed = torch.zeros(300, dtype=torch.bool)
    confirmed[:10] = True
    kept = verdict(labels, probs, confirmed=confirmed)
    assert not kept.flags[:10].any() and kept.flags[10:40].all() and not kept.flags[40:].any()
    torch.testing.assert_close(kept.quality, free.quality)  # scores are still reported


def test_callback_keeps_confirmed_rows_and_prior_weights(tmp_path, blobs):
    def fit(confirmed=None, weights=None):
        model = FoldEnsemble(
            partial(MLP, (8,), 3, hidden=(32,)),
            blobs.labels,
            num_folds=4,
            true_labels=blobs.true,
            lr=1e-2,
        )
        n = blobs.n
        over = type("O", (), {})()
        over.confirmed = confirmed if confirmed is not None else np.zeros(n, bool)
        over.weights = weights if weights is not None else np.ones(n, np.float32)
        attach_label_file(model.samples, over)
        # the action at once on every flag (no ramp, no confidence gate): weights are exact
        cl = ConfidentLearning(warmup_epochs=2, action="prune", ramp_steps=1, min_confidence=0.0)
        fast_trainer(tmp_path, [OOFCollector(), cl], max_epochs=4).fit(model, datamodule=blobs)
        return model.samples, cl

    free, _ = fit()
    ever = (free.first_flagged >= 0).numpy()
    assert ever.sum() > 10  # the blobs carry ~15 % flipped labels
    confirmed = ever.copy()
    confirmed[np.flatnonzero(ever)[::2]] = False  # people confirmed every other flagged row
    weights = np.where(np.arange(blobs.n) % 3 == 0, 0.5, 1.0).astype(np.float32)
    s, cl = fit(confirmed, weights)
    assert (s.first_flagged[torch.from_numpy(confirmed)] == -1).all()  # never, in any epoch
    assert not s.flagged[torch.from_numpy(confirmed)].any()
    expected = torch.where(s.flagged, 0.0, 1.0) * torch.from_numpy(weights)
    torch.testing.assert_close(s.weights, expected)
    assert all(h["num_flagged"] <= ever.sum() - confirmed.sum() + 5 for h in cl.history)
    assert "quality_mean" in cl.history[-1]
