import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

import dcloop
from dcloop.data import LabelNoiseDataModule
from dcloop.data.text import TextCSV, TextDataset, TextSynth, synthetic_texts
from dcloop.errors import UserInputError, user_error_message
from dcloop.people.report import run_texts

from conftest import compose_dcloop

CONF = str(Path(dcloop.__file__).parent / "conf")
FRACS = {"seed": 0, "val_frac": 0.2, "test_frac": 0.2}


def write_csv(path, rows, header="text,label"):
    path.write_text(header + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def news(tmp_path, n=30):
    names = ["World", "Sports", "Business"]
    rows = [f'"story {i} about {names[i % 3].lower()} things",{names[i % 3]}' for i in range(n)]
    return write_csv(tmp_path / "news.csv", rows)


def test_csv_with_class_names_splits_and_points_at_rows(tmp_path):
    path = news(tmp_path)
    src = TextCSV(path)
    splits, names = src.load(**FRACS)
    assert names == ["Business", "Sports", "World"]  # sorted without `classes`
    train = splits["train"]
    assert isinstance(train, TextDataset)
    assert sum(len(s) for s in splits.values()) == 30
    x, y, i = train[0]
    assert x.dtype == torch.int64 and x.shape == (64,) and i == 0
    row = int(train.source(0).rsplit("row ", 1)[1])
    assert train.source(0) == f"{path}:row {row}"
    assert train.texts[0] == f"story {row} about {['world', 'sports', 'business'][row % 3]} things"
    assert src.net_kwargs["vocab_size"] == src.tokenizer.vocab_size
    assert src.net_kwargs["pad_id"] == 0


def test_vocabulary_is_fitted_on_the_training_split_only(tmp_path):
    splits, _ = (src := TextCSV(news(tmp_path))).load(**FRACS)
    seen = {w for t in splits["train"].texts for w in t.split()}
    test_only = {w for t in splits["test"].texts for w in t.split()} - seen
    assert test_only and not (test_only & set(src.tokenizer.itos))


def test_classes_file_fixes_order_and_ids_are_accepted(tmp_path):
    (tmp_path / "classes.txt").write_text("World\nSports\nBusiness\n")
    splits, names = TextCSV(news(tmp_path), classes=str(tmp_path / "classes.txt")).load(**FRACS)
    assert names == ["World", "Sports", "Business"]
    ids = write_csv(tmp_path / "ids.csv", [f"text number {i},{i % 2}" for i in range(20)])
    splits, names = TextCSV(ids).load(**FRACS)
    assert names == ["0", "1"]


def test_jsonl_and_a_separate_test_file(tmp_path):
    lines = [
        json.dumps({"body": f"word{i % 2} text {i}", "y": ["neg", "pos"][i % 2]}) for i in range(20)
    ]
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "test.jsonl").write_text("\n".join(lines[:4]) + "\n")
    src = TextCSV(
        tmp_path / "train.jsonl",
        text_column="body",
        label_column="y",
        test_path=tmp_path / "test.jsonl",
    )
    splits, names = src.load(**FRACS)
    assert names == ["neg", "pos"] and len(splits["test"]) == 4
    assert len(splits["train"]) + len(splits["val"]) == 20
    assert splits["test"].source(3).endswith("test.jsonl:row 3")


@pytest.mark.parametrize(
    "content, match",
    [
        ("body,label\nhello,a\n", r"lacks column\(s\) \['text'\]"),
        ("text,label\nhello,a\n   ,b\nworld,a\n", r"row 1 has an empty 'text'"),
        ("text,label\nhello,a\nworld,\n", r"row 1 has an empty 'label'"),
        (
            "text,label\nhello,a\nworld,1\n",
            r"mixes class ids \('1'\) and class names \('a'\).*row 1: '1' and row 0: 'a'",
        ),
        ("", r"is empty"),
    ],
)
def test_bad_csv_gets_one_clear_message_naming_the_row(tmp_path, content, match):
    path = tmp_path / "bad.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UserInputError, match=match) as err:
        TextCSV(path).load(**FRACS)
    msg = user_error_message(err.value)  # the CLI prints this one line and exits 2
    assert msg is not None and "\n" not in msg and "bad.csv" in msg


def test_unknown_label_names_the_row(tmp_path):
    path = write_csv(tmp_path / "t.csv", ["a,World", "b,Sports", "c,Weather"])
    with pytest.raises(UserInputError, match=r"row 2 has label 'Weather', which is not a known"):
        TextCSV(path, classes=["World", "Sports"]).load(**FRACS)


def test_unknown_label_in_the_test_file_names_it(tmp_path):
    train = write_csv(tmp_path / "train.csv", [f"t{i},{'ab'[i % 2]}" for i in range(10)])
    test = write_csv(tmp_path / "test.csv", ["x,a", "y,c"])
    with pytest.raises(UserInputError, match=r"test.csv': row 1 has label 'c'"):
        TextCSV(train, test_path=test).load(**FRACS)


def test_non_utf8_file_names_the_line(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("text,label\nhello,a\ncaf\xe9 au lait,b\n".encode("latin-1"))
    with pytest.raises(UserInputError, match=r"is not UTF-8: byte \d+ \(line 3\)"):
        TextCSV(path).load(**FRACS)


def test_bad_jsonl_line_and_missing_key(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": "x"}\nnot json\n')
    with pytest.raises(UserInputError, match=r"line 2 is not JSON"):
        TextCSV(path).load(**FRACS)
    path.write_text('{"text": "a", "label": "x"}\n{"text": "b"}\n')
    with pytest.raises(UserInputError, match=r"row 1 \(line 2\) lacks key\(s\) \['label'\]"):
        TextCSV(path).load(**FRACS)


def test_missing_file_is_a_path_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        TextCSV(tmp_path / "nope.csv").load(**FRACS)


def test_synthetic_texts_are_deterministic_and_balanced():
    a, ya, names = synthetic_texts(num_per_class=50)
    b, yb, _ = synthetic_texts(num_per_class=50)
    assert a == b and np.array_equal(ya, yb)
    assert names == ["topic_0", "topic_1", "topic_2", "topic_3"]
    assert np.bincount(ya).tolist() == [50] * 4
    lengths = [len(t.split()) for t in a]
    assert min(lengths) >= 8 and max(lengths) <= 40 and len(set(lengths)) > 10
    c, _, _ = synthetic_texts(num_per_class=50, synth_seed=1)
    assert c != a


def test_datamodule_with_a_text_source_injects_noise_and_serves_token_ids():
    dm = LabelNoiseDataModule(
        source=TextSynth(num_per_class=60), noise={"kind": "symmetric", "rate": 0.2}, seed=0
    )
    dm.setup()
    assert dm.num_classes == 4
    assert dm.is_noisy.mean() == pytest.approx(0.2, abs=0.02)
    assert set(dm.net_kwargs) == {"vocab_size", "pad_id", "max_len"}
    x, y, i = next(iter(dm.train_dataloader()))
    assert x.dtype == torch.int64 and x.shape[1] == dm.net_kwargs["max_len"]
    assert torch.equal(y, torch.as_tensor(dm.given_labels)[i])
    assert dm.source_of(0).startswith("text_synth:row ")


def _cfg(tmp_path, *overrides):
    return compose_dcloop(tmp_path, *overrides)


def test_text_configs_compose_and_instantiate(tmp_path):
    cfg = _cfg(tmp_path, "data=text_synth", "model=text_bow", "data.source.num_per_class=40")
    dm = instantiate(cfg.data, noise=OmegaConf.to_container(cfg.noise), seed=0)
    assert isinstance(dm.source, str) and dm.source == "text_synth"  # nested source built
    dm.setup()
    path = news(tmp_path)
    cfg = _cfg(tmp_path, "data=text_csv", f"data.source.path={path}", "model=text_cnn")
    dm = instantiate(cfg.data, noise=OmegaConf.to_container(cfg.noise), seed=0)
    dm.setup()
    assert dm.num_train > 10
    cfg = _cfg(tmp_path, "data=text_csv")
    with pytest.raises(Exception, match="path"):
        OmegaConf.to_container(cfg.data, throw_on_missing=True)


def test_run_texts_reads_texts_back_from_a_run_config(tmp_path):
    path = news(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(
        f"data:\n  source:\n    _target_: dcloop.data.text.TextCSV\n    path: {path}\n"
        "    text_column: text\n"
    )
    got = run_texts(run, [f"{path}:row 4", "elsewhere", f"{path}:row 999"])
    assert got == ["story 4 about sports things", None, None]
    (run / "config.yaml").write_text(
        "data:\n  source:\n    _target_: dcloop.data.text.TextSynth\n    num_per_class: 20\n"
    )
    texts = synthetic_texts(num_per_class=20)[0]
    assert run_texts(run, ["text_synth:row 7"]) == [texts[7]]
    (run / "config.yaml").write_text("data:\n  source: digits\n")
    assert run_texts(run, ["digits:3"]) is None
