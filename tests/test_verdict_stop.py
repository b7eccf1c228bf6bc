"""``replica_stop``: with the student kept, the fold replicas stop once their verdict holds
(:class:`dcloop.callbacks.verdict_stop.VerdictStop`)."""

import json
from types import SimpleNamespace

import pytest
import torch

from dcloop.callbacks.verdict_stop import VerdictStop, jaccard
from dcloop.console import summarize
from dcloop.errors import UserInputError
from dcloop.train import train, verdict_stop

from conftest import RUN_QUIET, compose_dcloop


def _mask(n, on):
    m = torch.zeros(n, dtype=torch.bool)
    m[list(on)] = True
    return m


def test_jaccard_of_flag_masks():
    assert jaccard(_mask(6, [0, 1, 2]), _mask(6, [1, 2, 3])) == pytest.approx(2 / 4)
    assert jaccard(_mask(6, []), _mask(6, [])) == 1.0  # nothing flagged twice: it holds
    assert jaccard(_mask(6, [0]), _mask(6, [])) == 0.0


def _steps(stop, masks, first_epoch=1):
    """Feed ``stop`` one verdict per mask; the trainer's should_stop after each."""
    trainer = SimpleNamespace(current_epoch=0, is_global_zero=True, should_stop=False)
    seen = []
    for i, m in enumerate(masks):
        trainer.current_epoch = first_epoch - 1 + i
        stop.on_verdict(trainer, None, SimpleNamespace(last_result=SimpleNamespace(flags=m)))
        seen.append(trainer.should_stop)
    return seen


def test_stops_after_patience_steps_that_hold_and_not_before():
    a, b = _mask(20, range(10)), _mask(20, range(1, 11))  # Jaccard 9/11 = 0.82
    stop = VerdictStop(stable=0.8, patience=2)
    # step 1 has nothing to compare with; 2 and 3 hold: the replicas stop after step 3
    assert _steps(stop, [a, b, a]) == [False, False, True]
    assert stop.stopped_epoch == 3
    assert [h["jaccard"] for h in stop.history][0] is None


def test_a_step_that_moves_restarts_the_count():
    a, c = _mask(20, range(10)), _mask(20, range(10, 20))  # Jaccard 0
    stop = VerdictStop(stable=0.9, patience=2)
    assert _steps(stop, [a, a, c, c, c]) == [False, False, False, False, True]
    assert stop.stopped_epoch == 5


def test_a_stricter_threshold_does_not_stop_on_the_same_flags():
    a, b = _mask(20, range(10)), _mask(20, range(1, 11))  # 0.82 < 0.9
    stop = VerdictStop(stable=0.9, patience=1)
    assert not any(_steps(stop, [a, b, a, b]))
    assert stop.stopped_epoch is None


def test_no_stop_before_the_floor_and_the_first_step_after_it_that_holds():
    a = _mask(20, range(10))
    stop = VerdictStop(stable=0.9, patience=1, floor=4)
    assert _steps(stop, [a, a, a, a, a]) == [False, False, False, True, True]
    assert stop.stopped_epoch == 4
    assert stop.summary()["floor"] == 4


def test_the_floor_is_a_fraction_of_the_replicas_epochs(tmp_path):
    cfg = compose_dcloop(tmp_path, *RUN_QUIET, "trainer.max_epochs=20", "replica_stop.floor=0.75")
    assert verdict_stop(cfg).floor == 15
    with pytest.raises(UserInputError, match="replica_stop.floor"):
        verdict_stop(compose_dcloop(tmp_path, *RUN_QUIET, "replica_stop.floor=2"))


def test_state_round_trip_and_a_resumed_run_does_not_train_more_replica_epochs():
    a = _mask(8, [1, 2])
    stop = VerdictStop(stable=0.9, patience=1)
    _steps(stop, [a, a])
    back = VerdictStop(stable=0.9, patience=1)
    back.load_state_dict(stop.state_dict())
    assert back.stopped_epoch == stop.stopped_epoch == 2
    trainer = SimpleNamespace(should_stop=False)
    back.on_train_start(trainer, None)
    assert trainer.should_stop  # the resumed fit ends at once; the student goes on
    fresh = VerdictStop(stable=0.9, patience=2)  # mid-streak: the count carries over
    _steps(fresh, [a, a])
    again = VerdictStop(stable=0.9, patience=2)
    again.load_state_dict(fresh.state_dict())
    assert _steps(again, [a], first_epoch=3) == [True]


@pytest.mark.parametrize(
    ("key", "value"), [("stable", 0), ("stable", 1.5), ("patience", 0), ("stable", "x")]
)
def test_bad_settings_name_the_key(key, value):
    with pytest.raises(UserInputError, match=f"replica_stop.{key}"):
        VerdictStop(**{key: value})


def test_the_rule_applies_with_the_student_kept_only(tmp_path):
    on = compose_dcloop(tmp_path, *RUN_QUIET, "replica_stop.stable=0.9")
    assert isinstance(verdict_stop(on), VerdictStop)
    shipped = verdict_stop(compose_dcloop(tmp_path, *RUN_QUIET))  # on by default
    assert (shipped.stable, shipped.patience) == (0.95, 3)
    off = compose_dcloop(tmp_path, *RUN_QUIET, "replica_stop.stable=null")
    assert verdict_stop(off) is None
    ens = compose_dcloop(tmp_path, *RUN_QUIET, "replica_stop.stable=0.9", "kept=ensemble")
    assert verdict_stop(ens) is None  # the replicas are the kept model: their full schedule


@pytest.mark.slow
def test_a_run_stops_its_replicas_and_the_student_trains_the_full_schedule(tmp_path):
    """A threshold any two steps pass: the replicas stop at the first step that can compare
    (warm-up 2, patience 1: after epoch 3 of 8); the student still trains 8 epochs."""
    cfg = compose_dcloop(
        tmp_path,
        *RUN_QUIET,
        "trainer.max_epochs=8",
        "cl.warmup_epochs=2",
        "cl.ready=fixed",
        "replica_stop.stable=1e-9",
        "replica_stop.patience=1",
    )
    metrics = train(cfg)
    stop = metrics["kept"]["replica_stop"]
    assert stop["stopped_epoch"] == 3
    assert [h["epoch"] for h in stop["history"]] == [2, 3]
    history = json.loads((tmp_path / "metrics.json").read_text())["history"]
    assert max(h["epoch"] for h in history) == 3  # no confident-learning step after the stop
    assert "stopped after epoch 3 (their verdict held)" in summarize(tmp_path, metrics)
    assert metrics["kept"]["model"] == "student"
    assert (tmp_path / "model" / "model.json").exists()


@pytest.mark.slow
def test_resuming_after_the_stop_trains_no_more_replica_epochs(tmp_path):
    """The replicas' last.ckpt written at the stop, resumed in another folder: the fit ends at
    once (no step after epoch 3), and the verdict and its flags are the uninterrupted run's."""
    over = (
        "logger=none",
        "trainer.enable_progress_bar=false",
        "trainer.max_epochs=6",
        "cl.warmup_epochs=2",
        "cl.ready=fixed",
        "replica_stop.stable=1e-9",
        "replica_stop.patience=1",
        "health=false",
        "report=false",
    )
    first = train(compose_dcloop(tmp_path / "a", *over))
    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    again = train(compose_dcloop(tmp_path / "b", *over, f"resume={ckpt}"))
    assert again["kept"]["replica_stop"]["stopped_epoch"] == 3
    assert again["history"] == first["history"]
    assert (tmp_path / "b" / "label_issues.csv").read_bytes() == (
        tmp_path / "a" / "label_issues.csv"
    ).read_bytes()


def test_a_trainer_without_confident_learning_is_named():
    with pytest.raises(ValueError, match=r"VerdictStop reads .* needs a ConfidentLearning"):
        VerdictStop().setup(SimpleNamespace(callbacks=[]), None, "fit")


def test_a_bad_replica_stop_value_fails_before_the_data_loads(tmp_path, monkeypatch):
    import dcloop.train as tr

    def build(*_a, **_k):
        raise AssertionError("build ran: the value was not checked first")

    monkeypatch.setattr(tr, "build", build)
    cfg = compose_dcloop(tmp_path, *RUN_QUIET, "replica_stop.stable=2")
    with pytest.raises(UserInputError, match=r"replica_stop\.stable"):
        train(cfg)
