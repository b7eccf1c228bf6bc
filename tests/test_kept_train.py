"""A run hands over its kept model (issue 21): ``train()`` saves it in ``RUN/model/`` and,
reloaded, it scores the test accuracy that ``metrics.json``'s ``kept`` block reports."""

import json

import pytest
import torch
from hydra.utils import instantiate

import dcloop
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
