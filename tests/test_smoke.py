"""``trainer.fast_dev_run=true`` end to end: every experiment, every data option without files."""

import json
from pathlib import Path

import pytest

import dcloop
from dcloop.train import train

CONF = Path(dcloop.__file__).parent / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
SMALL = {  # the embedded data sets, kept small
    "digits": [],
    "audio_synth": ["model=audio_cnn", "data.source.num_per_class=14"],
    "text_synth": ["model=text_bow", "data.source.num_per_class=40"],
}


def _smoke(compose_config, tmp_path, *overrides):
    cfg = compose_config("trainer.fast_dev_run=true", *overrides)
    metrics = train(cfg)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["data"]["num_train"] == metrics["data"]["num_train"] > 0
    assert (tmp_path / "label_issues.csv").exists() and (tmp_path / "report.html").exists()
    return metrics


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_runs_with_fast_dev_run(experiment, compose_config, tmp_path):
    _smoke(compose_config, tmp_path, f"experiment={experiment}", "model=mlp")


@pytest.mark.parametrize("data", sorted(SMALL))
def test_every_embedded_data_option_runs_with_fast_dev_run(data, compose_config, tmp_path):
    metrics = _smoke(compose_config, tmp_path, f"data={data}", *SMALL[data])
    assert metrics["data"]["source"]
