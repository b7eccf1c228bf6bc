import numpy as np
import pandas as pd
import pytest

from dcloop.beyond.cli import main as beyond_main
from dcloop.beyond.ner import (
    check_token_probs,
    find_span_issues,
    find_token_issues,
    make_sentences,
    make_synthetic_conll,
    read_conll,
    spans_as_samples,
    token_oof_probs,
    write_conll,
)

CONLL = """-DOCSTART- -X- O O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
"""


def test_read_conll(tmp_path):
    p = tmp_path / "a.conll"
    p.write_text(CONLL)
    s = read_conll(p)
    assert s.tokens == [["EU", "rejects", "German", "call"], ["Peter", "Blackburn"]]
    assert s.tags[1] == ["B-PER", "I-PER"]
    assert s.tag_names[0] == "O" and set(s.tag_names) == {"O", "B-ORG", "B-MISC", "B-PER", "I-PER"}
    assert s.labels[1].tolist() == [s.tag_names.index("B-PER"), s.tag_names.index("I-PER")]
    assert p.read_text() == CONLL  # only read


def test_bad_ner_input_is_named(tmp_path):
    p = tmp_path / "bad.conll"
    p.write_text("EU B-ORG\nrejects\n")
    with pytest.raises(ValueError, match="line 2"):
        read_conll(p)
    with pytest.raises(FileNotFoundError, match="nope.conll"):
        read_conll(tmp_path / "nope.conll")
    with pytest.raises(ValueError, match="sentence 1 has 2 tokens but 1 tags"):
        make_sentences([["a"], ["b", "c"]], [["O"], ["O"]])
    s = make_sentences([["a", "b"], ["c"]], [["O", "B-X"], ["O"]])
    with pytest.raises(ValueError, match=r"sentence 1 has shape \(2, 2\), expected \(1, 2\)"):
        check_token_probs(s.labels, [np.full((2, 2), 0.5), np.full((2, 2), 0.5)], 2)


def test_spans_as_samples_known_answer():
    s = make_sentences(
        [["Peter", "Blackburn", "visited", "New", "York", "City", "today"]],
        [["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "I-LOC", "O"]],
    )
    spans = spans_as_samples(s, window=1)
    assert spans[["start", "end", "label", "text"]].values.tolist() == [
        [0, 2, "PER", "Peter Blackburn"],
        [3, 6, "LOC", "New York City"],
    ]
    assert spans.loc[1, "left"] == "visited" and spans.loc[1, "right"] == "today"


def test_user_probs_flag_the_disagreeing_token():
    s = make_sentences([["a", "b", "c"]] * 20, [["O", "B-X", "O"]] * 20)
    probs = [np.array([[0.95, 0.05], [0.05, 0.95], [0.95, 0.05]]) for _ in range(20)]
    probs[7] = np.array([[0.95, 0.05], [0.97, 0.03], [0.95, 0.05]])  # token 1 looks like O
    issues, ranked = find_token_issues(s, probs)
    assert issues[["sentence", "token_index"]].values.tolist() == [[7, 1]]
    assert issues.loc[0, "given_tag"] == "B-X" and issues.loc[0, "suggested_tag"] == "O"
    assert ranked.loc[0, "sentence"] == 7 and ranked.loc[0, "num_issues"] == 1


def test_builtin_token_model_finds_corrupted_tags():
    s, corrupted = make_synthetic_conll(120, noise_rate=0.1, seed=0)
    probs = token_oof_probs(s.tokens, s.labels, len(s.tag_names), folds=3, n_features=2**14)
    assert [p.shape for p in probs[:2]] == [(len(s.tokens[0]), 4), (len(s.tokens[1]), 4)]
    issues, ranked = find_token_issues(s, probs)
    found = set(zip(issues["sentence"], issues["token_index"], strict=True))
    hits = len(found & set(corrupted))
    assert hits / len(corrupted) >= 0.8 and hits / max(len(found), 1) >= 0.8
    # the sentences ranked worst hold corrupted tokens
    bad_sents = {c[0] for c in corrupted}
    assert set(ranked["sentence"].head(10)) <= bad_sents
    spans = spans_as_samples(s)
    table, span_probs = find_span_issues(spans, folds=3)
    assert span_probs.shape == (len(spans), 3)
    flagged = set(
        zip(
            table.loc[table["flagged"], "sentence"],
            table.loc[table["flagged"], "start"],
            strict=True,
        )
    )
    assert len(flagged & set(corrupted)) / len(corrupted) >= 0.7


def test_cli_ner(tmp_path, capsys):
    s, corrupted = make_synthetic_conll(60, noise_rate=0.1, seed=1)
    write_conll(tmp_path / "a.conll", s)
    # user probabilities: confident in the given tag, except at the corrupted tokens
    probs = []
    for i, lab in enumerate(s.labels):
        p = np.full((len(lab), 4), 0.02)
        p[np.arange(len(lab)), lab] = 0.94
        for si, ti in corrupted:
            if si == i:
                p[ti] = 0.02
                p[ti, (lab[ti] % 3) + 1] = 0.94  # another entity tag
        probs.append(p)
    np.save(tmp_path / "p.npy", np.concatenate(probs))
    args = ["ner", str(tmp_path / "a.conll"), "--probs", str(tmp_path / "p.npy")]
    assert beyond_main([*args, "--folds", "3", "--out", str(tmp_path / "o")]) == 0
    assert "token issues" in capsys.readouterr().out
    issues = pd.read_csv(tmp_path / "o" / "token_issues.csv")
    assert set(zip(issues.sentence, issues.token_index, strict=True)) == set(corrupted)
    assert (tmp_path / "o" / "sentences_ranked.csv").exists()
    assert (tmp_path / "o" / "span_issues.csv").exists()
    np.save(tmp_path / "short.npy", np.concatenate(probs)[:-1])
    with pytest.raises(SystemExit, match="2"):
        beyond_main(["ner", str(tmp_path / "a.conll"), "--probs", str(tmp_path / "short.npy")])
    assert "one row per token" in capsys.readouterr().err
