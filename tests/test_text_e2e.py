"""An end-to-end text run through ``dcloop.train.train`` on the embedded synthetic texts."""

import json

import pandas as pd
import pytest

from dcloop.train import train

from conftest import RUN_QUIET, compose_dcloop

QUIET = [*RUN_QUIET]


def cfg_for(tmp_path, *overrides):
    return compose_dcloop(tmp_path, *QUIET, *overrides)


@pytest.mark.slow
def test_text_synth_end_to_end_finds_injected_noise(tmp_path, capsys):
    # 20 % symmetric noise on 1,300 synthetic texts, 12 epochs. Flagging at random gives
    # precision 0.20; the 5-fold bag-of-words model measured precision 0.86 / recall 0.82
    # at 15 epochs (F1 0.84), and the texts are ambiguous by design (a clean naive Bayes
    # reaches ~94 %), so 0.75 / 0.7 leaves room for run-to-run variation while still
    # failing for a broken OOF buffer, fold mask or tokenizer.
    cfg = cfg_for(
        tmp_path,
        "data=text_synth",
        "model=text_bow",
        "trainer.max_epochs=12",
        "noise.rate=0.2",
        "model.vectorize=vmap",  # (auto loops on CPU) the text nets batch under vmap
    )
    metrics = train(cfg)
    det = metrics["detection"]
    assert det["precision"] >= 0.75 and det["recall"] >= 0.7, det
    assert metrics["test"]["accuracy"] >= 0.85
    assert metrics["cleaning"]["vectorized"]  # the K replicas ran through vmap
    issues = pd.read_csv(tmp_path / "label_issues.csv")
    assert issues["source"].str.startswith("text_synth:row ").all()
    html = (tmp_path / "report.html").read_text()
    assert 'class="snippet"' in html and "topic_" in html  # text snippets, class names

    from dcloop.people.export import export_queue

    paths = export_queue(tmp_path, top=5)
    queue = pd.read_csv(paths["csv"])
    assert "text" in queue and queue["text"].str.len().min() > 0
    tasks = json.loads(paths["labelstudio"].read_text())
    assert tasks[0]["data"]["text"] == queue["text"][0]
    assert tasks[0]["predictions"][0]["result"][0]["to_name"] == "text"
    xml = paths["config"].read_text()
    assert '<Text name="text" value="$text"/>' in xml and '<Choice value="topic_0"/>' in xml


@pytest.mark.slow
def test_text_synth_with_targeted_text_augmentation_runs(tmp_path):
    cfg = cfg_for(
        tmp_path,
        "data=text_synth",
        "model=text_cnn",
        "data.source.num_per_class=120",
        "trainer.max_epochs=4",
        "cl.warmup_epochs=2",
        "augment=text_targeted",
        "report=false",
    )
    metrics = train(cfg)
    assert metrics["augment"]["modality"] == "text"
    assert metrics["augment"]["weak_history"]  # the weak-class rule ran on text
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0
