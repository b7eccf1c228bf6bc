"""End to end: a deliberately broken model trips the harm guard, and people are told."""

import json

import pytest
from test_train import cfg_for

from dcloop.console import summarize
from dcloop.train import train


@pytest.mark.slow
def test_constant_model_trips_the_guard_and_the_warning_reaches_every_output(tmp_path, capsys):
    cfg = cfg_for(
        tmp_path,
        "model=mlp",
        "~model.net.hidden",
        "~model.net.dropout",
        "model.net._target_=weaknets.ConstantNet",
        "model.optimizer.lr=0.0",
        "trainer.max_epochs=8",
        "cl.warmup_epochs=2",
    )
    metrics = train(cfg)
    safety = metrics["safety"]
    assert safety["backoffs"] == 2 and safety["stopped"]
    events = safety["guard_events"]
    assert "give the same output for every input" in " ".join(events[0]["problems"])
    assert "predicted for no training sample" in " ".join(events[0]["problems"])
    assert events[-1]["action"].endswith("cleaning stopped for the rest of the run")
    assert metrics["warnings"] and metrics["cleaning"]["min_class_kept_frac"] == 1.0
    # no verdict to learn from: the kept student trained on the given labels, and says so
    assert metrics["kept"]["targets"] == "given" and metrics["kept"]["evidence"] == "oof"
    assert "auto" not in metrics["kept"]
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["warnings"] == metrics["warnings"]
    html = (tmp_path / "report.html").read_text()
    assert "the guard saw signs of harm" in html
    assert "give the same output for every input" in html
    out = summarize(tmp_path, metrics)  # what the CLI prints (train() itself prints nothing)
    assert capsys.readouterr().out == ""
    assert "WARNING" in out and "give the same output" in out
