import json

import numpy as np
import pandas as pd
import pytest

from dcloop.beyond.cli import main as beyond_main
from dcloop.beyond.pairs import pair_features, precision_recall, score_pairs


def _pairs(n=300, corrupt=10, seed=0):
    """Y = tanh(X W) + small noise; ``corrupt`` rows get the Y of another row (a wrong pairing)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    y = np.tanh(x @ rng.normal(size=(4, 3))) + 0.02 * rng.normal(size=(n, 3))
    bad = rng.choice(n, size=corrupt, replace=False)
    y[bad] = y[np.roll(bad, 1)]
    truth = np.zeros(n, bool)
    truth[bad] = True
    return x, y, truth


def test_corrupted_pairs_rank_among_top_outliers():
    x, y, truth = _pairs()
    table = score_pairs(x, y, k=10)
    assert list(table.columns[:4]) == ["index", "knn", "iforest", "residual"]
    assert (np.diff(table["knn"]) <= 0).all()  # worst first
    # Each swapped Y is a normal Y value and each X a normal X: only the pair is odd.
    top20 = set(table["index"].head(20))
    assert len(top20 & set(np.flatnonzero(truth))) >= 8
    pr = precision_recall(table, truth)
    assert pr["knn"]["precision"] >= 0.6 and pr["knn"]["auroc"] >= 0.95
    assert pr["residual"]["precision"] >= 0.9
    assert pr["knn"]["recall"] == pr["knn"]["precision"]  # top = number of anomalies


def test_one_corrupted_pair_is_the_top_outlier():
    x, y, _ = _pairs(n=200, corrupt=0, seed=3)
    y[17] = -y[17]  # a wrong target for row 17
    table = score_pairs(x, y)
    assert table.loc[0, "index"] == 17
    assert table.loc[table["index"] == 17, "residual_rank"].item() == 0


def test_embedding_functions_and_weights():
    x, y, truth = _pairs(n=120, corrupt=4)
    f = pair_features(x, y, embed_x=lambda a: a * 10.0, embed_y=lambda b: b[:, :2])
    assert f.shape == (120, 6)
    # each side standardised and divided by sqrt(D): total squared norm per side = 1
    assert np.allclose((f[:, :4] ** 2).sum(1).mean(), 1.0)
    assert np.allclose((f[:, 4:] ** 2).sum(1).mean(), 1.0)
    reg = pair_features(x, y[:, 0])  # a regression target (N,)
    assert reg.shape == (120, 5)


def test_precision_recall_known_answer():
    table = pd.DataFrame(
        {"index": [0, 1, 2, 3], "knn": [0.9, 0.1, 0.8, 0.2], "iforest": [0.1, 0.2, 0.9, 0.8]}
    )
    pr = precision_recall(table, [True, False, False, False], top=2)
    assert pr["knn"]["precision"] == 0.5 and pr["knn"]["recall"] == 1.0
    assert pr["iforest"]["precision"] == 0.0 and pr["iforest"]["recall"] == 0.0


def test_mismatched_rows_are_named():
    with pytest.raises(ValueError, match="10 rows of X and 9 rows of Y"):
        score_pairs(np.zeros((10, 2)), np.zeros((9, 2)))
    with pytest.raises(ValueError, match="NaN or inf.*row 3"):
        y = np.zeros((10, 2))
        y[3, 1] = np.nan
        score_pairs(np.ones((10, 2)), y)
    x, y, _ = _pairs(n=50, corrupt=2)
    with pytest.raises(ValueError, match="one entry per pair \\(50\\)"):
        precision_recall(score_pairs(x, y), np.zeros(49, bool))


def test_cli_pairs(tmp_path, capsys):
    x, y, truth = _pairs(n=200, corrupt=8)
    for name, arr in (("x", x), ("y", y), ("t", truth)):
        np.save(tmp_path / f"{name}.npy", arr)
    args = [
        "pairs",
        "--x",
        str(tmp_path / "x.npy"),
        "--y",
        str(tmp_path / "y.npy"),
        "--truth",
        str(tmp_path / "t.npy"),
        "--out",
        str(tmp_path / "o"),
    ]
    assert beyond_main(args) == 0
    assert "precision" in capsys.readouterr().out
    table = pd.read_csv(tmp_path / "o" / "pair_outliers.csv")
    assert len(table) == 200
    metrics = json.loads((tmp_path / "o" / "pair_metrics.json").read_text())
    assert metrics["knn"]["recall"] >= 0.6
    with pytest.raises(SystemExit) as exit_info:  # bad input: exit 2, one line, no traceback
        beyond_main(["pairs", "--x", str(tmp_path / "nope.npy"), "--y", str(tmp_path / "y.npy")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("dcloop-beyond pairs: error:") and "nope.npy" in err


def test_residual_excludes_the_pair_itself_when_x_repeats():
    from dcloop.beyond.pairs import residual_scores

    rng = np.random.default_rng(0)
    x = np.repeat(rng.normal(size=(30, 4)), 3, axis=0)  # each X three times (3 captions)
    y = x[:, :2] + 0.01 * rng.normal(size=(90, 2))
    y[7] += 5.0  # one wrong target
    scores = residual_scores(x, y, k=3)
    # with self excluded, row 7's residual is its full offset; the wrong Y also raises the
    # residuals of its two siblings, but less
    assert int(np.argmax(scores)) == 7 and scores[7] > 6.5  # |(5, 5)| = 7.07; with self: 4.7
    with pytest.raises(ValueError, match=r"k must be an integer >= 1 \(neighbours\); got k=0"):
        score_pairs(x, y, k=0)
