import json

import numpy as np
import pytest
import torch

from dcloop.augment import Augmenter
from dcloop.augment.text import (
    TEXT_OPS,
    TextAugment,
    TextAugmentedDataset,
    alpha,
    backtranslate_all,
    build_synonyms,
    cooccurrence_synonyms,
    random_delete,
    random_insert,
    random_swap,
    read_synonym_table,
    resolve_hook,
    synonym_replace,
    wordnet_available,
)
from dcloop.data.text import TextDataset, synthetic_texts
from dcloop.data.tokenize import NgramTokenizer

TEXT = "the quick brown fox jumps over the lazy dog near the quiet river bank today"
SYN = {"quick": ["fast", "speedy"], "lazy": ["idle"], "dog": ["hound"], "river": ["stream"]}
EDA = ["synonym", "insert", "swap", "delete"]


def changed(a: str, b: str) -> int:
    wa, wb = a.split(), b.split()
    return sum(x != y for x, y in zip(wa, wb, strict=False)) + abs(len(wa) - len(wb))


@pytest.mark.parametrize("op", EDA)
def test_each_op_is_deterministic_under_a_seed_and_edits_at_the_strongest_level(op):
    aug = TextAugment([op], level=3, num_levels=3, p=1.0, synonyms=SYN)
    outs = {aug(TEXT, seed=s) for s in range(5)}
    assert aug(TEXT, seed=1) == aug(TEXT, seed=1)
    assert all(o != TEXT for o in outs) and len(outs) > 1


@pytest.mark.parametrize("op", EDA)
def test_level_zero_leaves_the_text_and_levels_grow_the_edits(op):
    assert TextAugment([op], level=0, num_levels=3, p=1.0, synonyms=SYN)(TEXT, seed=0) == TEXT
    mild = TextAugment([op], level=1, num_levels=3, p=1.0, synonyms=SYN)
    strong = TextAugment([op], level=3, num_levels=3, p=1.0, synonyms=SYN)
    m = np.mean([changed(TEXT, mild(TEXT, seed=s)) for s in range(40)])
    s = np.mean([changed(TEXT, strong(TEXT, seed=s)) for s in range(40)])
    assert s > m > 0


def test_magnitudes_interpolate_from_mild_to_strong():
    assert alpha("swap", 0, 3) == 0.0
    assert alpha("swap", 1, 3) == TEXT_OPS["swap"][0]
    assert alpha("swap", 3, 3) == TEXT_OPS["swap"][1]
    assert alpha("swap", 1, 3) < alpha("swap", 2, 3) < alpha("swap", 3, 3)


def test_ops_do_what_eda_says():
    import random

    ws = TEXT.split()
    rng = random.Random(0)
    out = synonym_replace(ws, 2, SYN, rng)
    diff = [(a, b) for a, b in zip(ws, out, strict=True) if a != b]
    assert len(diff) == 2 and all(b in SYN[a] for a, b in diff)
    out = random_insert(ws, 3, SYN, rng)
    assert len(out) == len(ws) + 3
    assert sorted(random_swap(ws, 3, rng)) == sorted(ws)  # a permutation
    assert random_delete(["one"], 0.99, rng) == ["one"]
    assert len(random_delete(ws, 0.999, rng)) == 1  # one word always stays
    assert synonym_replace(ws, 3, {}, rng) == ws  # no synonyms: unchanged


def test_stop_words_are_not_replaced():
    import random

    out = synonym_replace(["the", "dog"], 2, {"the": ["a"], "dog": ["hound"]}, random.Random(0))
    assert out == ["the", "hound"]


def test_synonym_tables_json_and_csv(tmp_path):
    (tmp_path / "s.json").write_text(json.dumps({"Car": ["auto", "car"], "big": ["large"]}))
    assert read_synonym_table(tmp_path / "s.json") == {"car": ["auto"], "big": ["large"]}
    (tmp_path / "s.csv").write_text("word,synonyms\ncar,auto;vehicle\ncar,motor\nbig,large|huge\n")
    assert read_synonym_table(tmp_path / "s.csv") == {
        "car": ["auto", "vehicle", "motor"],
        "big": ["large", "huge"],
    }
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="word -> \\[synonyms\\]"):
        read_synonym_table(tmp_path / "bad.json")
    syn, used = build_synonyms("auto", [], tmp_path / "s.json")  # auto: a given table first
    assert used == "table" and "car" in syn


def test_cooccurrence_neighbours_stay_within_a_topic():
    texts, labels, _ = synthetic_texts(num_per_class=150, shared_words=0)
    syn = cooccurrence_synonyms(texts)
    own = {}
    for t, y in zip(texts, labels, strict=True):
        for w in t.split():
            own.setdefault(w, set()).add(int(y))
    topic = {w for w, ys in own.items() if len(ys) == 1}  # words of one class only
    pairs = [(w, n) for w in topic if w in syn for n in syn[w] if n in topic]
    assert len(pairs) > 50
    same = np.mean([own[w] == own[n] for w, n in pairs])
    assert same > 0.9  # neighbours of a topic word are words of the same topic


def test_wordnet_only_when_already_installed():
    if wordnet_available():
        syn, used = build_synonyms("wordnet", ["the car is fast"], None)
        assert used == "wordnet"
    else:
        with pytest.raises(ValueError, match="never downloads"):
            build_synonyms("wordnet", ["a b"], None)
        assert build_synonyms("auto", ["a b c"] * 5, None)[1] == "cooccurrence"


def fake_translator(texts: list[str]) -> list[str]:
    """Stands in for a MarianMT round trip: a deterministic rewording."""
    return [" ".join(reversed(t.split())) for t in texts]


def test_hook_contract_is_checked():
    assert backtranslate_all(fake_translator, ["a b", "c d"], batch_size=1) == ["b a", "d c"]
    with pytest.raises(ValueError, match="returned 1 texts for 2"):
        backtranslate_all(lambda ts: ts[:1], ["a", "b"])
    with pytest.raises(ValueError, match="a list of str"):
        backtranslate_all(lambda ts: "x", ["a"])
    with pytest.raises(ValueError, match="returned a int at position 0"):
        backtranslate_all(lambda ts: [1 for _ in ts], ["a"])
    assert backtranslate_all(lambda ts: ["  "], ["keep me"]) == ["keep me"]  # empty: original
    with pytest.raises(ValueError, match="callable"):
        resolve_hook(42)
    hook = resolve_hook({"_target_": "builtins.sorted", "_partial_": True})  # a _target_ hook
    assert hook(["b", "a"]) == ["a", "b"]


def make_translator():
    return fake_translator


def test_backtranslate_op_uses_the_hook_output_by_index():
    aug = TextAugment(["backtranslate"], level=3, num_levels=3, p=1.0, backtranslated=["b a"])
    assert aug("a b", seed=0, index=0) == "b a"
    with pytest.raises(ValueError, match="needs augment.backtranslate"):
        TextAugment(["backtranslate"], level=1, num_levels=3)


def text_dataset(n=40):
    texts, labels, names = synthetic_texts(num_per_class=n // 4)
    tok = NgramTokenizer(max_len=32).fit(texts)
    return TextDataset(texts, labels, tok, num_classes=4, class_names=names)


def test_augmented_items_keep_label_and_index_and_are_retokenised():
    ds = text_dataset()
    aug = TextAugment(EDA, level=3, num_levels=3, p=1.0, synonyms=SYN)
    wrapped = TextAugmentedDataset(ds, [None, aug, aug, aug])
    for i in range(10):
        x, y, j = wrapped[(i, 3, 123)]
        assert (y, j) == (int(ds.labels[i]), i)  # label-preserving
        assert x.dtype == torch.int64 and x.shape == (32,)
        assert torch.equal(x, ds.encode(aug(ds.texts[i], 123, i)))
        assert torch.equal(wrapped[(i, 0, 5)][0], ds[i][0])  # level 0: the stored ids


def test_augmenter_binds_a_text_dataset_and_serves_augmented_batches():
    ds = text_dataset()
    aug = Augmenter.from_config(
        {"kind": "uniform", "levels": 3, "level": 3, "p": 1.0, "text_ops": EDA,
         "synonyms": "cooccurrence", "backtranslate": make_translator()}
    )  # fmt: skip
    aug.bind(ds, ds.labels, 4)
    assert aug.modality == "text" and aug.synonym_source == "cooccurrence"
    loader = aug.train_loader(ds, batch_size=8, num_workers=0, seed=0)
    x, y, i = next(iter(loader))
    assert x.dtype == torch.int64 and x.shape == (8, 32)
    assert torch.equal(y, torch.as_tensor(ds.labels)[i])
    assert aug.on_batch((x, y, i))[0] is x  # nothing happens on the device for text
    again = next(iter(aug.train_loader(ds, batch_size=8, num_workers=0, seed=0)))
    assert torch.equal(again[0], x)  # deterministic under the seed


def test_augment_config_refuses_unknown_text_ops_and_sources():
    with pytest.raises(ValueError, match="unknown text op"):
        Augmenter.from_config({"kind": "uniform", "text_ops": ["shout"]})
    with pytest.raises(ValueError, match="synonyms must be one of"):
        Augmenter.from_config({"kind": "uniform", "synonyms": "thesaurus.com"})
