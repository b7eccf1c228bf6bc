"""Real annotators (CIFAR-10N): wide annotation tables, items by relative path, the CLI.

The tests on the real files skip when ``../shared/data`` is absent; the format tests do not.
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dcloop.people.cli import annotators_main
from dcloop.people.multiannotator import majority_vote, read_annotations, to_wide
from dcloop.results import write_csv

NAMES = ["cat", "dog", "eel"]
SOURCES = ["/data/imgs/train/cat/0.png", "/data/imgs/train/dog/0.png", "/data/imgs/test/cat/0.png"]
CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-subset"
needs_cifar10n = pytest.mark.skipif(
    not (CIFAR / "cifar10n" / "annotators.csv").is_file(),
    reason="../shared/data/cifar10-subset/cifar10n is not here",
)


def test_a_wide_table_is_one_column_per_annotator(tmp_path):
    (tmp_path / "w.csv").write_text("path,ann_1,ann_2\n0,cat,dog\n1,,eel\n2,dog,dog\n")
    long = read_annotations(tmp_path / "w.csv", NAMES, 3)
    assert long["index"].tolist() == [0, 0, 1, 2, 2]  # the blank cell: not labelled
    assert long["annotator"].tolist() == ["ann_1", "ann_2", "ann_2", "ann_1", "ann_2"]
    assert long["label"].tolist() == [0, 1, 2, 1, 1]
    items, wide, ids = to_wide(long)
    assert ids == ["ann_1", "ann_2"] and np.isnan(wide[1, 0])


def test_long_tables_are_read_as_before(tmp_path):
    (tmp_path / "l.csv").write_text("item,annotator,label\n0,a,cat\n1,b,dog\n")
    long = read_annotations(tmp_path / "l.csv", NAMES, 3)
    assert long["annotator"].tolist() == ["a", "b"]


def test_items_by_the_end_of_their_path():
    df = pd.DataFrame(
        {
            "item": ["train/cat/0.png", "dog/0.png", "./test/cat/0.png", SOURCES[0]],
            "annotator": ["a", "a", "a", "b"],
            "label": ["cat", "dog", "cat", "cat"],
        }
    )
    out = read_annotations(df, NAMES, 3, sources=SOURCES)
    assert out["index"].tolist() == [0, 1, 2, 0]


def test_an_ambiguous_or_foreign_path_is_an_unknown_item():
    for item in ("cat/0.png", "imgs/train/eel/0.png", "/other/train/cat/0.png"):
        df = pd.DataFrame({"item": [item], "annotator": ["a"], "label": ["cat"]})
        with pytest.raises(ValueError, match=rf"unknown item.*{item!r}.*end of it"):
            read_annotations(df, NAMES, 3, sources=SOURCES)


def test_a_wide_table_with_a_bad_label_says_how_it_was_read(tmp_path):
    (tmp_path / "w.csv").write_text("path,worker\n0,cow\n")
    with pytest.raises(ValueError, match=r"'cow'.*read as a wide table.*column 'path'"):
        read_annotations(tmp_path / "w.csv", NAMES, 3)


def fake_run(run_dir: Path, paths: list[str], truth: np.ndarray, names: list[str], seed=0):
    """A run folder as dcloop-annotators reads it: labels.csv, class_report.csv and OOF
    probabilities of a model that knows the truth 70 % of the time."""
    n, c = len(paths), len(names)
    rng = np.random.default_rng(seed)
    guess = np.where(rng.random(n) < 0.7, truth, rng.integers(0, c, n))
    probs = np.full((n, c), 0.3 / (c - 1))
    probs[np.arange(n), guess] = 0.7
    run_dir.mkdir(parents=True)
    np.save(run_dir / "oof_probs.npy", probs.astype(np.float32))
    labels = pd.DataFrame(
        {
            "index": np.arange(n),
            "given_label": truth,
            "true_label": truth,
            "is_noisy": False,
            "source": paths,
        }
    )
    write_csv(labels, run_dir / "labels.csv")
    write_csv(pd.DataFrame({"class": range(c), "name": names}), run_dir / "class_report.csv")


@needs_cifar10n
def test_cifar10n_annotators_with_the_console_script(tmp_path, capsys):
    ann = CIFAR / "cifar10n" / "annotators.csv"
    wide = pd.read_csv(ann, dtype=str)
    names = sorted({Path(p).parent.name for p in wide["path"]})
    paths = [str(CIFAR / p) for p in wide["path"]]
    truth = np.array([names.index(Path(p).parent.name) for p in paths])
    fake_run(tmp_path / "run", paths, truth, names)
    out = tmp_path / "out"
    assert annotators_main([str(tmp_path / "run"), str(ann), "--out", str(out), "--no-report"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["items"] == 5000 and summary["annotators"] == 3
    assert summary["annotations"] == 15000
    lq = pd.read_csv(out / "label_quality.csv")
    assert lq["index"].tolist() == list(range(5000))
    cons = lq["consensus_label"].to_numpy()
    major = lq["majority_label"].to_numpy()
    acc_cons, acc_major = (cons == truth).mean(), (major == truth).mean()
    # CIFAR-10N on this subset: the published aggregate is 9.2 % wrong; a 70 % model as a
    # fourth voter must help where the three people disagree.
    assert 0.85 < acc_major < 0.95 and acc_cons > acc_major, (acc_cons, acc_major)
    stats = pd.read_csv(out / "annotator_stats.csv").set_index("annotator")
    true = wide["path"].map(lambda p: Path(p).parent.name)
    accuracy = {c: (wide[c] == true).mean() for c in wide.columns[1:]}  # 0.825, 0.812, 0.814
    best = max(accuracy, key=accuracy.get)
    assert stats["annotator_quality"].idxmax() == best  # the most accurate slot scores highest


@needs_cifar10n
def test_cifar10n_majority_vote_matches_the_published_aggregate():
    ann = pd.read_csv(CIFAR / "cifar10n" / "annotators.csv", dtype=str)
    aggre = pd.read_csv(CIFAR / "cifar10n" / "aggre.csv", dtype=str)
    names = sorted(set(aggre["label"]))
    wide = np.array([[names.index(v) for v in ann[c]] for c in ann.columns[1:]], float).T
    vote, agree = majority_vote(wide, len(names), seed=0)
    clear = agree > 0.5  # a majority exists: no tie to break
    assert (ann["path"] == aggre["path"]).all()
    published = np.array([names.index(v) for v in aggre["label"]])
    assert (vote[clear] == published[clear]).all()


def test_items_the_run_held_out_are_an_error_unless_skipped(tmp_path, caplog):
    (tmp_path / "w.csv").write_text("path,a1,a2\ntrain/cat/0.png,cat,dog\nval/eel/9.png,eel,eel\n")
    with pytest.raises(ValueError, match=r"unknown item.*'val/eel/9.png'.*--skip-unknown"):
        read_annotations(tmp_path / "w.csv", NAMES, 3, sources=SOURCES)
    long = read_annotations(tmp_path / "w.csv", NAMES, 3, sources=SOURCES, skip_unknown=True)
    assert long["index"].tolist() == [0, 0] and long["label"].tolist() == [0, 1]
    assert "1 item(s) are not training rows" in caplog.text
    (tmp_path / "none.csv").write_text("path,a1\nval/eel/9.png,eel\n")
    with pytest.raises(ValueError, match="no annotated item is a training row"):
        read_annotations(tmp_path / "none.csv", NAMES, 3, sources=SOURCES, skip_unknown=True)


def test_the_console_script_skips_held_out_items_when_asked(tmp_path, capsys):
    paths = [f"/d/train/{c}/{k}.png" for c in NAMES for k in range(4)]
    truth = np.repeat(np.arange(3), 4)
    fake_run(tmp_path / "run", paths, truth, NAMES)
    rows = [f"train/{c}/{k}.png,{c},{c}" for c in NAMES for k in range(4)]
    (tmp_path / "w.csv").write_text("path,a1,a2\n" + "\n".join(rows) + "\nval/cat/9.png,cat,dog\n")
    args = [str(tmp_path / "run"), str(tmp_path / "w.csv"), "--no-report"]
    with pytest.raises(SystemExit) as err:
        annotators_main([*args, "--out", str(tmp_path / "o1")])
    assert err.value.code == 2
    assert "val/cat/9.png" in capsys.readouterr().err
    assert annotators_main([*args, "--out", str(tmp_path / "o2"), "--skip-unknown"]) == 0
    assert json.loads((tmp_path / "o2" / "summary.json").read_text())["items"] == 12
