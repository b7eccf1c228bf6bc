"""Seconds per phase: dcloop.timing, the callbacks' own records, metrics.json and the summary."""

import json
import time
from functools import partial
from pathlib import Path

import lightning as L
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

import dcloop
from dcloop.callbacks import ConfidentLearning, OOFCollector
from dcloop.console import summarize, timing_line
from dcloop.models import MLP, FoldEnsemble
from dcloop.timing import PHASES, LoopTiming, PhaseTimes, phase_times, timed, timed_hook
from dcloop.train import train

from conftest import fast_trainer


def test_phases_add_up_and_other_is_the_rest():
    t = PhaseTimes()
    with t.phase("oof"):
        time.sleep(0.02)
    t.add("test", 1.0)
    out = t.as_dict(total=2.0)
    assert 0.02 <= out["oof"] < 0.5 and out["test"] == 1.0
    assert out["total"] == 2.0 and out["other"] == pytest.approx(1.0 - out["oof"], abs=1e-3)
    assert set(PHASES) <= set(out)
    with pytest.raises(ValueError, match="unknown phase"):
        t.add("lunch", 1.0)


def test_pending_step_work_is_charged_to_the_steps_at_the_next_boundary():
    t = PhaseTimes()
    t.step_ended(time.perf_counter())
    time.sleep(0.02)
    with t.phase("oof"):
        pass
    assert t.seconds["train_steps"] >= 0.02 and t.seconds["oof"] < 0.02


class Slow(L.Callback):
    @timed_hook("policy_update")
    def on_train_epoch_end(self, trainer, pl_module):
        time.sleep(0.01)


@pytest.mark.parametrize("timing_first", [True, False])
def test_every_phase_is_timed_whatever_the_callback_order(tmp_path, blobs, timing_first):
    model = FoldEnsemble(partial(MLP, (8,), 3, hidden=(16,)), blobs.labels, num_folds=4)
    own = [OOFCollector(), ConfidentLearning(warmup_epochs=1), Slow()]
    callbacks = [LoopTiming(), *own] if timing_first else [*own, LoopTiming()]
    trainer = fast_trainer(tmp_path, callbacks, max_epochs=2)
    start = time.perf_counter()
    trainer.fit(model, datamodule=blobs)
    wall = time.perf_counter() - start
    with timed(trainer, "test"):
        time.sleep(0.01)
    s = phase_times(trainer).seconds
    for phase in ("train_steps", "data_loading", "oof", "confident_learning"):
        assert s[phase] > 0, phase
    assert s["policy_update"] >= 0.02 and s["test"] >= 0.01
    assert sum(v for k, v in s.items() if k != "test") < wall


def test_timing_line_shows_the_shares_of_phases_that_ran():
    line = timing_line({"train_steps": 6.0, "oof": 1.0, "refit": 0.0, "other": 3.0, "total": 10.0})
    assert line.strip() == "time        10.0 s: train steps 60%, OOF 10%, other 30%"


def test_metrics_json_has_timing_and_the_summary_prints_it(tmp_path, capsys):
    GlobalHydra.instance().clear()
    conf = str(Path(dcloop.__file__).parent / "conf")
    quiet = ["logger=none", "checkpoint=false", "trainer.enable_progress_bar=false"]
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[f"output_dir={tmp_path}", *quiet, "model=mlp", "report=false"]
            + ["trainer.max_epochs=2", "cl.warmup_epochs=1"],
        )
    metrics = train(cfg)
    timing = json.loads((tmp_path / "metrics.json").read_text())["timing"]
    assert timing == metrics["timing"]
    assert set(timing) == {*PHASES, "other", "total"}
    for phase in ("train_steps", "oof", "confident_learning", "test", "result_files"):
        assert timing[phase] > 0, phase
    assert sum(v for k, v in timing.items() if k != "total") == pytest.approx(
        timing["total"], abs=0.01
    )
    assert "  time        " in summarize(tmp_path, metrics)  # the CLI's summary
