"""Several annotators: input checks, majority vote, cleanlab consensus, the CLI."""

import json

import numpy as np
import pandas as pd
import pytest
from people_run import make_run

from dcloop.data import LabelNoiseDataModule
from dcloop.people.cli import annotators_main
from dcloop.people.multiannotator import consensus, majority_vote, read_annotations

NAMES = ["cat", "dog", "eel"]


def test_majority_vote_known_answers():
    nan = np.nan
    wide = np.array([[0, 0, 1], [2, nan, nan], [1, 2, nan], [nan, 1, 1]], dtype=float)
    votes = [majority_vote(wide, 3, seed=s) for s in range(20)]
    for v, agree in votes:
        assert v[0] == 0 and v[1] == 2 and v[3] == 1
        assert v[2] in (1, 2)
        np.testing.assert_allclose(agree, [2 / 3, 1, 0.5, 1])
    assert {int(v[2]) for v, _ in votes} == {1, 2}  # ties are broken at random, seeded
    np.testing.assert_array_equal(
        majority_vote(wide, 3, seed=4)[0], majority_vote(wide, 3, seed=4)[0]
    )


def test_read_annotations_by_index_name_and_source():
    df = pd.DataFrame(
        {"item": ["0", "0", "src:2"], "annotator": ["a", "b", "a"], "label": ["cat", "2", "dog"]}
    )
    out = read_annotations(df, NAMES, 3, sources=["src:0", "src:1", "src:2"])
    assert out["index"].tolist() == [0, 0, 2] and out["label"].tolist() == [0, 2, 1]


@pytest.mark.parametrize(
    "text, msg",
    [
        ("item,annotator,label\n0,a,cat\n7,a,dog\n", r"unknown item.*'7'"),
        ("item,annotator,label\n0,a,cow\n", r"unknown label.*'cow'"),
        ("item,annotator,label\n0,a,cat\n0,a,dog\n", r"duplicate.*\(item 0, 'a'\)"),
        ("item,worker,answer\n0,a,cat\n", r"missing column.*\['item', 'annotator', 'label'\]"),
        ("item,annotator,label\n0,,cat\n", r"empty annotator"),
        ("item,annotator,label\nfoo.png,a,cat\n", r"unknown item.*'foo.png'"),
    ],
)
def test_malformed_annotations_are_named(tmp_path, text, msg):
    (tmp_path / "a.csv").write_text(text)
    with pytest.raises(ValueError, match=msg):
        read_annotations(tmp_path / "a.csv", NAMES, 3, sources=["x", "y", "z"])


def simulated(n=400, c=3, seed=0):
    """Three good annotators and one bad; the model knows the truth 90 % of the time."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, c, n)
    acc = {"good1": 0.9, "good2": 0.85, "good3": 0.8, "bad": 0.4}
    rows = []
    for i in range(n):
        for a in rng.choice(list(acc), size=2 if i % 3 else 3, replace=False):
            lab = true[i] if rng.random() < acc[a] else (true[i] + rng.integers(1, c)) % c
            rows.append((i, a, int(lab)))
    long = pd.DataFrame(rows, columns=["index", "annotator", "label"])
    model = np.where(rng.random(n) < 0.9, true, (true + 1) % c)
    probs = np.full((n, c), 0.1)
    probs[np.arange(n), model] = 0.8
    return long, probs / probs.sum(1, keepdims=True), true


def test_cleanlab_consensus_beats_majority_and_ranks_annotators():
    long, probs, true = simulated()
    cons = consensus(long, probs, NAMES, seed=0)
    it = cons.items
    assert it["index"].tolist() == list(range(len(true)))
    acc_cl = (it["consensus_label"] == true).mean()
    acc_mv = (it["majority_label"] == true).mean()
    assert acc_cl > acc_mv + 0.05, (acc_cl, acc_mv)  # ties and the bad annotator cost the vote
    assert acc_cl > 0.88
    q = cons.annotators.set_index("annotator")["annotator_quality"]
    assert q["bad"] == q.min() and q["good1"] > q["good3"]
    right = it["consensus_label"] == true
    assert it.loc[right, "consensus_quality"].mean() > it.loc[~right, "consensus_quality"].mean()
    np.testing.assert_array_equal(it["model_agrees"], it["model_label"] == it["consensus_label"])
    assert (
        cons.classes.set_index("class")["items"].tolist()
        == np.bincount(it["consensus_label"], minlength=3).tolist()
    )  # items per consensus class, not just a total of N
    cls = cons.classes.set_index("class")
    for k in range(3):
        m = it["consensus_label"] == k
        assert cls.loc[k, "model_agreement"] == pytest.approx((it["model_label"][m] == k).mean())


def test_annotators_cli_writes_consensus_and_trains_on_it(tmp_path, capsys):
    run = tmp_path / "run"
    make_run(run)
    labels = pd.read_csv(run / "labels.csv")
    rng = np.random.default_rng(1)
    rows = []
    for i, t in zip(labels["index"][:150], labels["true_label"][:150], strict=True):
        for a, acc in (("ann", 0.9), ("bob", 0.8), ("cy", 0.5)):
            lab = t if rng.random() < acc else (t + 1) % 10
            rows.append((f"digits:{labels['source'][i].split(':')[1]}", a, lab))
    pd.DataFrame(rows, columns=["item", "annotator", "label"]).to_csv(
        tmp_path / "a.csv", index=False
    )
    assert annotators_main([str(run), str(tmp_path / "a.csv"), "--weighted"]) == 0
    out = capsys.readouterr().out
    assert "150 items, 3 annotators, 450 labels" in out and "data.labels=" in out
    folder = run / "annotators"
    cons = pd.read_csv(folder / "consensus_labels.csv")
    assert len(cons) == 150 and (cons["status"] == "consensus").all()
    assert cons["weight"].between(0, 1).all()
    truth = labels.set_index("index").loc[cons["index"], "true_label"].to_numpy()
    assert (cons["label"].to_numpy() == truth).mean() > 0.9
    stats = pd.read_csv(folder / "annotator_stats.csv").set_index("annotator")
    assert stats["annotator_quality"].idxmin() == "cy"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["items"] == 150 and 0 <= summary["model_agrees_with_consensus"] <= 1
    html = (run / "report.html").read_text()
    assert "Annotators" in html and "Human-model agreement per class" in html
    dm = LabelNoiseDataModule(
        "digits",
        noise={"kind": "symmetric", "rate": 0.2},
        seed=0,
        labels=folder / "consensus_labels.csv",
    )
    dm.setup()  # the next run trains on the consensus, weighted by its quality
    np.testing.assert_array_equal(dm.given_labels[cons["index"]], cons["label"])
    np.testing.assert_allclose(dm.label_override.weights[cons["index"]], cons["weight"], rtol=1e-6)
    assert not dm.label_override.confirmed.any()  # a consensus is not a person's verdict
