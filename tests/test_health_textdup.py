"""Near-duplicate texts by token-set Jaccard (:func:`dcloop.health.text_duplicates`) and the
callback using it on text runs."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from dcloop.callbacks import DataHealth
from dcloop.errors import UserInputError
from dcloop.health import text_duplicates
from dcloop.health.textdup import _sets


def _brute(ids, ref, t, unk):
    q = _sets(ids, "q", 0, unk).toarray() > 0
    r = q if ref is None else _sets(ref, "r", 0, unk).toarray() > 0
    v = max(q.shape[1], r.shape[1])
    q, r = (np.pad(m, ((0, 0), (0, v - m.shape[1]))).astype(int) for m in (q, r))
    inter = q @ r.T
    jac = inter / np.maximum(q.sum(1)[:, None] + r.sum(1)[None] - inter, 1)
    return {(i, j) for i, j in zip(*np.nonzero(jac >= t), strict=True) if ref is not None or i < j}


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.8, 1.0])
@pytest.mark.parametrize("across", [False, True])
def test_every_pair_at_the_threshold_is_found_as_brute_force_finds_it(threshold, across):
    g = np.random.default_rng(int(threshold * 10) + across)
    ids = torch.from_numpy(g.integers(0, 30, (80, 10)))
    ids[5] = ids[17]  # an exact copy
    ref = torch.from_numpy(g.integers(0, 30, (50, 8))) if across else None
    res = text_duplicates(ids, ref, threshold=threshold, unk_id=1)
    assert {tuple(p) for p in res.pairs.tolist()} == _brute(ids, ref, threshold, 1)
    assert bool((res.jaccard >= threshold - 1e-6).all())
    assert bool((res.jaccard[:-1] >= res.jaccard[1:]).all())  # most similar first


def test_padding_and_unknown_words_pair_nothing():
    ids = torch.tensor([[3, 0, 0], [1, 1, 0], [1, 0, 0], [3, 2, 0]])
    res = text_duplicates(ids, threshold=0.5, pad_id=0, unk_id=1)
    assert res.pairs.tolist() == [[0, 3]]  # rows 1 and 2 hold only the unknown id
    with pytest.raises(UserInputError, match="integer token ids"):
        text_duplicates(torch.rand(3, 4))
    with pytest.raises(ValueError, match="threshold"):
        text_duplicates(ids, threshold=0.0)


def test_the_callback_adds_copied_texts_and_leaked_texts(tmp_path):
    g = torch.Generator().manual_seed(0)
    train = torch.randint(2, 500, (40, 12), generator=g)
    train[25] = train[3]
    train[25, :2] = torch.tensor([7, 8])  # an edited copy: 10 of 12 tokens kept
    test = torch.randint(2, 500, (5, 12), generator=g)
    test[4] = train[9]  # a leaked text
    emb = torch.randn(40, 16, generator=g)  # an embedding that sees no pair
    labels, probs = torch.arange(40) % 2, torch.full((40, 2), 0.5)
    cb = DataHealth(tmp_path, text_jaccard=0.6)
    cb._tokens, cb._test_tokens = [train[:20], train[20:]], [test]
    sources = [f"tr{i}" for i in range(40)]
    cb._train_issues(None, emb, labels, probs, sources)
    folder = tmp_path / "data_issues"
    pairs = pd.read_csv(folder / "near_duplicates.csv")
    assert pairs[["source_a", "source_b"]].values.tolist() == [["tr3", "tr25"]]
    cb._test_issues(
        None, emb, torch.randn(5, 16, generator=g), sources, [f"te{i}" for i in range(5)]
    )
    leak = pd.read_csv(folder / "leakage.csv")
    assert leak[["source_a", "source_b", "signal"]].values.tolist() == [["te4", "tr9", "tokens"]]
    assert json.loads((folder / "summary.json").read_text())["leakage"] == 1
    off = DataHealth(tmp_path / "off", text_jaccard=0.0)
    off._tokens = [train]
    off._train_issues(None, emb, labels, probs, sources)
    assert len(pd.read_csv(tmp_path / "off" / "data_issues" / "near_duplicates.csv")) == 0
    with pytest.raises(ValueError, match="health.text_jaccard"):
        DataHealth(text_jaccard=1.5)
