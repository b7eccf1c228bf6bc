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


# 2. Class names, not ids, wherever a person reads.

DOLLAR_NAMES = ["price $5 and $6", r"$\notacmd{$", "a class name far too long for any chart axis"]


def _named_run(run_dir, names=DOLLAR_NAMES, source_len=20):
    import numpy as np
    import torch

    from dcloop.cl import verdict
    from dcloop.folds import assign_folds
    from dcloop.results import write_json, write_run_files
    from dcloop.state import SampleTable

    c, per = len(names), 12
    true = np.repeat(np.arange(c), per)
    given = true.copy()
    given[::5] = (true[::5] + 1) % c
    n = len(true)
    probs = np.full((n, c), 0.05)
    probs[np.arange(n), true] = 0.9
    probs = torch.tensor(probs / probs.sum(1, keepdims=True), dtype=torch.float32)
    table = SampleTable(given, assign_folds(given, 3, seed=0))
    result = verdict(table.labels, probs)
    table.record_flags(result.flags, result.quality, result.suggested, 0)
    sources = [f"/{'d' * source_len}/img{i}.png" for i in range(n)]
    run_dir.mkdir(parents=True, exist_ok=True)
    write_run_files(run_dir, table, probs, result, sources, names)
    metrics = _metrics()
    metrics["cleaning"].update(num_flagged=int(table.flagged.sum()), num_folds=3)
    metrics["data"].update(num_train=n, num_classes=c)
    write_json(metrics, run_dir / "metrics.json")
    return metrics


def test_label_issues_has_class_names_beside_the_ids(tmp_path):
    from dcloop.csvsafe import read_csv

    _named_run(tmp_path)
    df = read_csv(tmp_path / "label_issues.csv", dtype={"given_name": str, "suggested_name": str})
    cols = list(df.columns)
    assert cols[1:5] == ["given_label", "given_name", "suggested_label", "suggested_name"]
    for r in df.head(10).itertuples():
        assert r.given_name == DOLLAR_NAMES[r.given_label]
        assert r.suggested_name == DOLLAR_NAMES[r.suggested_label]


def test_summary_worst_line_names_the_classes(tmp_path):
    from dcloop.console import summarize

    metrics = _named_run(tmp_path)
    worst = next(ln for ln in summarize(tmp_path, metrics).splitlines() if "worst" in ln)
    assert any(f"{a}->{b}" in worst for a in DOLLAR_NAMES for b in DOLLAR_NAMES), worst


def test_dollar_and_long_class_names_do_not_crash_the_charts(tmp_path):
    import numpy as np

    from dcloop.people.report import axis_names, heatmap_png, write_report

    png = heatmap_png(np.eye(3), DOLLAR_NAMES, "estimated P(given | true)")
    assert png.startswith(b"\x89PNG")
    short = axis_names(DOLLAR_NAMES)
    assert short[0] == r"price \$5 and \$6" and max(len(s) for s in short) <= 20
    _named_run(tmp_path, source_len=300)
    html = write_report(tmp_path).read_text()
    assert "price $5 and $6" in html  # the tables and cards keep the whole name
    assert ">\u2026" + "d" * 40 in html and ">/" + "d" * 300 not in html  # the path's end
    assert "overflow-wrap:anywhere" in html
