"""A user's first week (issue 24): safe defaults for their own data, names instead of ids,
run folders that do not collide, one line instead of a traceback."""

import pytest

from dcloop.cli import check_noise_choice
from dcloop.console import run_summary
from dcloop.errors import UserInputError

from conftest import compose_dcloop

USER_DATA = ("folder", "csv", "audio_folder", "text_csv", "coco", "cifar10", "mnist")
DEMO_DATA = ("digits", "audio_synth", "text_synth")


# 1. Never flip a user's own labels by default.


@pytest.mark.parametrize("data", USER_DATA)
def test_users_own_data_gets_no_injected_noise_by_default(tmp_path, data):
    cfg = compose_dcloop(tmp_path, f"data={data}")
    assert cfg.noise.kind == "none" and cfg.noise.rate == 0.0
    assert cfg.data.noise.kind == "none"  # what the data module receives


@pytest.mark.parametrize("data", DEMO_DATA)
def test_demo_data_keeps_its_injected_noise(tmp_path, data):
    cfg = compose_dcloop(tmp_path, f"data={data}")
    assert cfg.noise.kind == "symmetric" and cfg.noise.rate == 0.2


def test_noise_on_own_data_only_when_asked(tmp_path):
    cfg = compose_dcloop(tmp_path, "data=folder", "noise=asymmetric")
    assert cfg.noise.kind == "asymmetric"
    cfg = compose_dcloop(tmp_path, "data=folder", "experiment=sym40_downweight")
    assert cfg.noise.kind == "symmetric" and cfg.noise.rate == 0.4
    cfg = compose_dcloop(tmp_path, "data=digits", "experiment=oracle")
    assert cfg.noise.kind == "none"


def test_a_noise_rate_without_a_noise_kind_is_one_error(tmp_path):
    cfg = compose_dcloop(tmp_path, "data=folder", "noise.rate=0.3")
    with pytest.raises(UserInputError, match=r"noise.rate=0.3 .*noise=symmetric"):
        check_noise_choice(cfg)
    check_noise_choice(compose_dcloop(tmp_path, "data=folder"))  # the default is fine


def _metrics(**extra):
    return {
        "data": {"source": "folder", "num_train": 100, "num_classes": 3},
        "cleaning": {"num_flagged": 4, "num_folds": 5, "action": "downweight"},
        "noise": {"rate": 0.04},
        "test": {"accuracy": 0.9},
        **extra,
    }


def test_summary_says_no_noise_was_injected(tmp_path):
    text = run_summary(_metrics(), tmp_path, [])
    assert "no noise injected" in text
    injected = {"kind": "symmetric", "rate": 0.2, "num_noisy": 20, "rate_actual": 0.2}
    text = run_summary(_metrics(noise_injected=injected), tmp_path, [])
    assert "no noise injected" not in text and "made wrong on purpose" in text
