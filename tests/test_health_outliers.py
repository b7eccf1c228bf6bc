"""Outliers beyond Datalab's kNN distance: the fence, the log-similarity scale for sparse
features, rare-word texts, image properties; and a text run that names an off-topic text."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from dcloop.errors import UserInputError
from dcloop.health import fence, find_outliers, find_rare_texts, image_properties, token_rarity
from dcloop.health.properties import combine, property_names, robust_standardise

from conftest import RUN_QUIET, compose_dcloop


def test_fence_is_datalabs_q3_plus_1_7_iqr():
    s = torch.arange(101.0)
    assert fence(s) == pytest.approx(75 + 1.7 * 50)
    with pytest.raises(UserInputError, match="finite"):
        fence(torch.tensor([1.0, float("nan")]))


def _sparse_texts(n=300, vocab=2000, words=12, seed=0):
    """Bag-of-words rows of short texts that share from 1 to 8 of their words with a small
    common vocabulary: distances spread from about 0.4 to near 1, so the fence
    ``Q3 + 1.7 IQR`` lies above 1, the largest cosine distance of non-negative rows. Row 0
    shares no word with any other."""
    g = np.random.default_rng(seed)
    x = np.zeros((n, vocab + words), np.float32)
    common = np.arange(30)
    for i in range(n):
        c = int(g.integers(1, 9))
        x[i, g.choice(common, c, replace=False)] = 1
        x[i, g.choice(np.arange(30, vocab), words - c, replace=False)] = 1
    x[0] = 0
    x[0, vocab:] = 1  # words of its own
    return torch.from_numpy(x)


def test_log_similarity_scale_flags_a_sparse_off_topic_row_the_distance_scale_misses():
    x = _sparse_texts()
    plain = find_outliers(x, k=10)
    logged = find_outliers(x, k=10, scale="log_similarity")
    assert plain.cutoff > float(plain.score.max()) and not plain.flags.any()  # saturated
    assert bool(logged.flags[0])
    assert int(logged.score.argmax()) == 0


def test_log_similarity_needs_cosine_and_a_known_scale():
    x = torch.randn(30, 4)
    with pytest.raises(UserInputError, match="metric='cosine'"):
        find_outliers(x, metric="euclidean", scale="log_similarity")
    with pytest.raises(UserInputError, match="scale must be one of"):
        find_outliers(x, scale="log")


def test_token_rarity_scores_the_text_of_rare_words_highest_and_flags_it():
    g = np.random.default_rng(0)
    ids = torch.from_numpy(g.integers(2, 40, (200, 15)))  # 38 common words
    ids[:, 12:] = 0  # padding
    ids[7, :12] = torch.arange(100, 112)  # words no other text holds
    score = token_rarity(ids)
    assert int(score.argmax()) == 7
    out = find_rare_texts(ids)
    assert out.flags.nonzero().flatten().tolist() == [7]


def test_token_rarity_counts_the_unknown_id_as_the_rarest_and_ignores_padding():
    ids = torch.tensor([[2, 3, 0, 0], [2, 3, 0, 0], [2, 1, 1, 0], [1, 1, 1, 1]])
    plain = token_rarity(ids)
    unk = token_rarity(ids, unk_id=1)
    assert unk[3] == pytest.approx(np.log(4))  # every token unknown: log N
    assert plain[3] == pytest.approx(np.log(4 / 2))  # id 1 held by 2 texts
    assert plain[0] == pytest.approx(np.mean([np.log(4 / 3), np.log(4 / 2)]))
    assert token_rarity(torch.tensor([[0, 0], [2, 0]]))[0] == 0.0  # no tokens


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.zeros(3), "shape"),
        (torch.zeros(3, 2), "integers"),
        (-torch.ones(3, 2).long(), ">= 0"),
    ],
)
def test_token_rarity_bad_ids_are_one_clear_error(bad, match):
    with pytest.raises(UserInputError, match=match):
        token_rarity(bad)


def test_image_properties_see_grey_dark_and_noisy_images():
    g = torch.Generator().manual_seed(0)
    smooth = torch.linspace(0.2, 0.8, 32)[None, None, :, None].expand(1, 3, 32, 32).clone()
    smooth[:, 0] *= 0.5  # a colour cast: not grey
    grey = smooth.mean(1, keepdim=True).expand(1, 3, 32, 32)
    dark = smooth * 0.1
    noise = torch.rand(1, 3, 32, 32, generator=g)
    p = image_properties(torch.cat([smooth, grey, dark, noise]))
    names = property_names(3)
    col = {n: p[:, i] for i, n in enumerate(names)}
    assert p.shape == (4, len(names)) == (4, 11)
    assert float(col["saturation"][1]) == pytest.approx(0.0, abs=1e-6)
    assert col["saturation"][0] > 0.05
    assert col["brightness"][2] < col["brightness"][0]
    assert int(col["high_frequency"].argmax()) == 3 and int(col["log_blur"].argmax()) == 3
    with pytest.raises(UserInputError, match="3x3"):
        image_properties(torch.zeros(2, 3, 2, 2))


def test_combine_weighs_blocks_equally_whatever_their_width():
    g = torch.Generator().manual_seed(0)
    wide, narrow = torch.randn(500, 200, generator=g) * 50, torch.randn(500, 2, generator=g)
    x = combine(wide, narrow)
    assert x.shape == (500, 202)
    share = x[:, 200:].square().sum() / x.square().sum()
    assert 0.4 < float(share) < 0.6
    z = robust_standardise(torch.tensor([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0], [100.0, 5.0]]))
    assert torch.equal(z[:, 1], torch.zeros(4))  # a constant column becomes 0
    with pytest.raises(UserInputError, match="same rows"):
        combine(torch.randn(5, 2), torch.randn(6, 2))


@pytest.mark.slow
def test_a_text_run_names_an_off_topic_text_by_its_rare_words(tmp_path):
    g = np.random.default_rng(0)
    topics = {
        c: [f"{c}{j}" for j in range(25)] for c in ("sport", "money", "space")
    }  # words of each class
    rows = [
        {"text": " ".join(g.choice(words, 12)), "label": c}
        for c, words in topics.items()
        for _ in range(60)
    ]
    off = " ".join(f"zebra{j} quartz{j}" for j in range(6))  # words of no other text
    rows.insert(5, {"text": off, "label": "sport"})
    path = tmp_path / "texts.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    run = tmp_path / "run"
    cfg = compose_dcloop(
        run,
        *RUN_QUIET,
        "data=text_csv",
        f"data.source.path={path}",
        "data.source.tokenizer.min_count=1",
        "data.test_frac=0.2",
        "data.val_frac=0.0",
        "model=text_bow",
        "folds=2",
        "trainer.max_epochs=2",
        "cl.warmup_epochs=1",
        "kept=ensemble",
    )
    from dcloop.train import train

    train(cfg)
    out = pd.read_csv(run / "data_issues" / "outliers.csv")
    assert list(out.columns) == ["index", "source", "score", "rarity", "signal"]
    assert str(out.loc[0, "source"]).endswith(":row 5")  # the off-topic text, first
    assert out.loc[0, "signal"] in ("rarity", "both")
    assert out.loc[0, "rarity"] == out["rarity"].max()
    assert set(out["signal"]) <= {"rarity", "both"}  # by default text's outliers are its rare texts
    summary = json.loads((run / "data_issues" / "summary.json").read_text())
    assert summary["rare_texts"] >= 1 and summary["outliers"] == summary["rare_texts"]
    assert summary["outlier_signal"] == "rarity"
