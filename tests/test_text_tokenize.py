import pytest
import torch

from dcloop.data.tokenize import PAD_ID, UNK_ID, NgramTokenizer, make_tokenizer, words

TRAIN = ["the cat sat on the mat", "the dog sat on the log", "a cat and a dog"]


def test_words_split_punctuation_and_lowercase():
    assert words("Hello, World! It's 3pm.") == ["hello", ",", "world", "!", "it's", "3pm", "."]


def test_round_trip_of_known_words():
    tok = NgramTokenizer(max_len=16).fit(TRAIN)
    for text in TRAIN:
        ids = tok.encode(text)
        assert ids.dtype == torch.int64 and ids.shape == (16,)
        assert tok.decode(ids) == text


def test_vocabulary_comes_from_the_training_texts_only():
    tok = NgramTokenizer(max_len=8).fit(TRAIN)
    ids = tok.encode("the zebra sat")
    assert ids[1].item() == UNK_ID  # "zebra" was never seen in training
    assert tok.decode(ids) == "the <unk> sat"


def test_padding_and_truncation_give_fixed_length():
    tok = NgramTokenizer(max_len=4).fit(TRAIN)
    short, long = tok.encode("cat"), tok.encode("the cat sat on the mat")
    assert short.tolist()[1:] == [PAD_ID] * 3
    assert long.shape == (4,) and (long != PAD_ID).all()
    assert tok.encode("").tolist() == [PAD_ID] * 4
    assert tok.encode_batch(TRAIN).shape == (3, 4)


def test_max_vocab_keeps_the_most_frequent_features():
    tok = NgramTokenizer(max_vocab=3).fit(TRAIN)
    assert tok.vocab_size == 2 + 3
    assert tok.itos[2:] == ["the", "a", "cat"]  # counts 4, 2, 2 (ties broken by the word)


def test_min_count_drops_rare_features():
    tok = NgramTokenizer(min_count=2).fit(TRAIN)
    assert set(tok.itos[2:]) == {"the", "sat", "on", "cat", "dog", "a"}


def test_bigrams_and_char_ngrams_are_features():
    tok = NgramTokenizer(ngrams=(1, 2), char_ngrams=(3,))
    feats = tok.features("ab cd")
    assert feats[:3] == ["ab", "cd", "ab cd"]
    assert "<ab" in feats and "cd>" in feats


def test_hash_buckets_are_stable_and_in_range():
    tok = NgramTokenizer(max_vocab=2, hash_buckets=16).fit(TRAIN)
    a, b = tok.encode("zebra unicorn"), tok.encode("zebra unicorn")
    assert torch.equal(a, b)
    base = len(tok.itos)
    assert base <= a[0].item() < base + 16 and tok.vocab_size == base + 16
    # crc32, not Python's salted hash(): the same id in every process
    import zlib

    assert a[0].item() == base + zlib.crc32(b"zebra") % 16


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"ngrams": "1"}, "ngrams must be a list"),
        ({"ngrams": (), "char_ngrams": ()}, "at least one"),
        ({"max_len": 0}, "tokenizer.max_len must be an integer >= 1; got tokenizer.max_len=0"),
        ({"hash_buckets": -1}, "hash_buckets"),
    ],
)
def test_bad_tokenizer_options_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        NgramTokenizer(**kw)


def test_make_tokenizer_from_config_and_unknown_kind():
    tok = make_tokenizer({"kind": "ngram", "ngrams": [1, 2], "max_len": 5})
    assert tok.ngrams == (1, 2) and tok.max_len == 5
    with pytest.raises(ValueError, match="kind must be one of"):
        make_tokenizer({"kind": "bpe"})
    with pytest.raises(ValueError, match="tokenizer: "):
        make_tokenizer({"kind": "ngram", "nope": 1})


def test_hf_tokenizer_from_a_local_file(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers

    hf = tokenizers.Tokenizer(models.WordLevel({"[UNK]": 0, "cat": 1, "dog": 2}, "[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    hf.save(str(tmp_path / "tokenizer.json"))
    tok = make_tokenizer({"kind": "hf", "path": str(tmp_path), "max_len": 4})
    assert tok.encode("cat dog").tolist() == [2, 3, 0, 0]  # shifted by one: 0 stays padding


def test_hf_tokenizer_without_the_package_says_so(tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_tokenizers(name, *a, **k):
        if name == "tokenizers":
            raise ImportError("no")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_tokenizers)
    with pytest.raises(ValueError, match="needs the 'tokenizers' package"):
        make_tokenizer({"kind": "hf", "path": str(tmp_path)})
