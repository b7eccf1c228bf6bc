"""``replica_precision``: with the student kept, the fold replicas train at their own
``trainer.precision`` (bf16 autocast where the machine runs it natively), the student at
the run's."""

import pytest
import torch

import dcloop.train as tr
from dcloop.console import summarize
from dcloop.errors import UserInputError
from dcloop.models.nets import MLP, SmallCNN
from dcloop.train import replica_precision, train

from conftest import RUN_QUIET, compose_dcloop


def test_off_by_default_and_a_mode_applies_with_the_student_kept_only(tmp_path):
    assert replica_precision(compose_dcloop(tmp_path, *RUN_QUIET)) is None
    on = compose_dcloop(tmp_path, *RUN_QUIET, "replica_precision=bf16-mixed")
    assert replica_precision(on) == "bf16-mixed"
    ens = compose_dcloop(tmp_path, *RUN_QUIET, "replica_precision=bf16-mixed", "kept=ensemble")
    assert replica_precision(ens) is None  # the replicas are the kept model
    own = compose_dcloop(
        tmp_path, *RUN_QUIET, "replica_precision=bf16-mixed", "+trainer.precision=32-true"
    )
    assert replica_precision(own) is None  # the user's trainer.precision wins


@pytest.mark.parametrize("native", [True, False])
def test_auto_is_bf16_only_where_the_machine_runs_it_natively(tmp_path, monkeypatch, native):
    monkeypatch.setattr(tr, "bf16_is_native", lambda accelerator: native)
    cfg = compose_dcloop(tmp_path, *RUN_QUIET, "replica_precision=auto")
    assert replica_precision(cfg) == ("bf16-mixed" if native else None)


def test_auto_leaves_a_net_without_convolutions_at_the_runs_precision(tmp_path, monkeypatch):
    # measured on this project's CPU: bf16 made an MLP's step 1.4x slower, a ResNet-8's 2x faster
    monkeypatch.setattr(tr, "bf16_is_native", lambda accelerator: True)
    cfg = compose_dcloop(tmp_path, *RUN_QUIET, "replica_precision=auto")
    assert replica_precision(cfg, MLP((1, 8, 8), 10)) is None
    assert replica_precision(cfg, SmallCNN(1, 10, width=4)) == "bf16-mixed"
    assert tr.convolutional(SmallCNN(1, 10, width=4)) and not tr.convolutional(MLP((4,), 2))


def test_bf16_is_native_answers_for_this_cpu_without_failing():
    assert isinstance(tr.bf16_is_native("cpu"), bool)
    assert tr.bf16_is_native("mps") is False


def test_a_bad_value_names_the_key(tmp_path):
    cfg = compose_dcloop(tmp_path, *RUN_QUIET, "replica_precision=half")
    with pytest.raises(UserInputError, match="replica_precision=half"):
        replica_precision(cfg)


@pytest.mark.slow
def test_the_replicas_train_in_bf16_and_the_student_in_float32(tmp_path, monkeypatch):
    trainers = []
    real = tr.lightning_trainer

    def spy(**kwargs):
        trainers.append(t := real(**kwargs))
        return t

    monkeypatch.setattr(tr, "lightning_trainer", spy)  # Hydra looks the _target_ up at call time
    cfg = compose_dcloop(
        tmp_path, *RUN_QUIET, "trainer.max_epochs=2", "replica_precision=bf16-mixed"
    )
    metrics = train(cfg)
    precisions = [t.precision for t in trainers]
    assert precisions[0] == "bf16-mixed"  # the replicas
    assert precisions[-1] == "32-true"  # the student
    assert metrics["kept"]["replica_precision"] == "bf16-mixed"
    assert ", trained at bf16-mixed" in summarize(tmp_path, metrics)
    state = torch.load(tmp_path / "model" / "member_0.pt", weights_only=True)
    assert all(v.dtype != torch.bfloat16 for v in state.values())  # the student: float32
