"""A run hands over its kept model (issue 21): ``train()`` saves it in ``RUN/model/`` and,
reloaded, it scores the test accuracy that ``metrics.json``'s ``kept`` block reports."""

import json

import pytest
import torch
from hydra.utils import instantiate

import dcloop
from dcloop.console import summarize
from dcloop.train import train

from conftest import RUN_QUIET, compose_dcloop


@pytest.mark.slow
@pytest.mark.parametrize("kept", ["student", "ensemble"])
def test_a_run_saves_the_kept_model_it_reports(tmp_path, kept):
    cfg = compose_dcloop(tmp_path, *RUN_QUIET, "trainer.max_epochs=2", f"kept={kept}")
    metrics = train(cfg)
    saved = json.loads((tmp_path / "metrics.json").read_text())["kept"]
    assert saved["model"] == kept == metrics["kept"]["model"]
    model = dcloop.load_model(tmp_path)
    assert model.name == kept
    assert model.kind == ("single" if kept == "student" else "ensemble")
    assert model.test_accuracy == pytest.approx(saved["test_accuracy"])
    dm = instantiate(cfg.data)
    dm.setup("fit")
    test = dm.test_dataset
    x = torch.stack([test[i][0] for i in range(len(test))])
    acc = (model.predict_proba(x).argmax(-1) == torch.as_tensor(test.labels)).float().mean()
    assert acc.item() == pytest.approx(saved["test_accuracy"], abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("kept", ["student", "ensemble"])
def test_replicas_narrower_than_the_student_with_model_replica_net(tmp_path, kept, monkeypatch):
    """model.replica_net.width=8: with kept=student the K fold replicas are SmallCNN width 8
    and the kept student width 32 (model.net); with kept=ensemble the replicas are the kept
    model, so model.net's width 32; either reloads to the accuracy the run reports."""
    import dcloop.train as tr

    built = {}
    real_build = tr.build

    def build(cfg, run_dir):
        built["run"] = run = real_build(cfg, run_dir)
        return run

    monkeypatch.setattr(tr, "build", build)
    cfg = compose_dcloop(
        tmp_path, *RUN_QUIET, "trainer.max_epochs=2", f"kept={kept}", "model.replica_net.width=8"
    )
    metrics = train(cfg)
    width = 8 if kept == "student" else 32
    if kept == "student":  # named in metrics.json and the summary
        assert metrics["kept"]["replica_net"] == {"width": 8}
        assert "fold replicas (width 8)" in summarize(tmp_path, metrics)
    else:
        assert "replica_net" not in metrics["kept"]
    params, _ = built["run"].model._stacked()
    first = next(v for k, v in params.items() if k.endswith("weight") and v.ndim == 5)
    assert first.shape[:2] == (cfg.folds, width)  # (K, out channels, in, kh, kw)
    spec = json.loads((tmp_path / "model" / "model.json").read_text())
    assert spec["net"]["width"] == 32  # the student, or the replicas at model.net's width
    model = dcloop.load_model(tmp_path)
    dm = instantiate(cfg.data)
    dm.setup("fit")
    test = dm.test_dataset
    x = torch.stack([test[i][0] for i in range(len(test))])
    acc = (model.predict_proba(x).argmax(-1) == torch.as_tensor(test.labels)).float().mean()
    assert acc.item() == pytest.approx(metrics["kept"]["test_accuracy"], abs=1e-6)


def test_a_student_from_replica_weights_needs_replicas_of_its_size(tmp_path):
    from dcloop.errors import UserInputError
    from dcloop.train import student_policy

    cfg = compose_dcloop(tmp_path, *RUN_QUIET, "student.init=replica", "model.replica_net.width=8")
    with pytest.raises(UserInputError, match="model.replica_net.width=null"):
        student_policy(cfg)
    cfg = compose_dcloop(tmp_path, *RUN_QUIET, "student.init=replica")  # cnn: half as wide
    with pytest.raises(UserInputError, match=r"\{'width': 16\}"):
        student_policy(cfg)
    cfg = compose_dcloop(tmp_path, *RUN_QUIET, "student.init=replica", "kept=ensemble")
    assert student_policy(cfg).init == "replica"  # kept=ensemble: replicas at model.net's size
    cfg = compose_dcloop(tmp_path, *RUN_QUIET, "student.init=replica", "model.replica_net.width=32")
    assert student_policy(cfg).init == "replica"  # net's own width: the same network


def test_replica_net_keeps_interpolations_of_model_net(tmp_path):
    """AudioCNN's sample_rate interpolates the data's: the replicas' merged config still
    resolves it (16 kHz here, not the 8 kHz fallback), and only width changes."""
    from dcloop.models.factory import has_replica_net, replica_net_changes, replica_net_config

    cfg = compose_dcloop(
        tmp_path,
        *RUN_QUIET,
        "data=audio_synth",
        "model=audio_cnn",
        "data.source.sample_rate=16000",
        "model.replica_net.width=4",
    )
    rep = replica_net_config(cfg.model)
    assert rep.sample_rate == cfg.model.net.sample_rate == 16000
    assert (rep.width, cfg.model.net.width) == (4, 8) and has_replica_net(cfg.model)
    assert replica_net_changes(cfg.model) == {"width": 4}
