"""scripts/summarize_sweep.py: a multirun folder -> one table (CSV, markdown) and a plot."""

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest

SCRIPT = Path(__file__).parent.parent / "scripts" / "summarize_sweep.py"
spec = importlib.util.spec_from_file_location("summarize_sweep", SCRIPT)
summarize = importlib.util.module_from_spec(spec)
spec.loader.exec_module(summarize)


def fake_job(sweep: Path, num: int, overrides: list[str], acc: float, f1: float) -> None:
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    metrics = {
        "test": {"accuracy": acc},
        "detection": {"precision": 0.9, "recall": 0.8, "f1": f1, "auroc": 0.99},
        "noise": {"rate": 0.21},
        "cleaning": {"num_flagged": 10 + num},
        "wall_time_s": 1.5,
    }
    (job / "metrics.json").write_text(json.dumps(metrics))


def test_summary_table_has_one_row_per_run_with_the_swept_keys(tmp_path):
    sweep = tmp_path / "multirun"
    grid = [(r, a) for r in ("0.2", "0.4") for a in ("prune", "downweight")]
    for i, (rate, action) in enumerate(grid):
        fake_job(
            sweep,
            i,
            [f"noise.rate={rate}", f"cl.action={action}", "seed=0"],
            acc=0.9 + i / 100,
            f1=0.5 + i / 10,
        )
    assert summarize.main([str(sweep)]) == 0
    df = pd.read_csv(sweep / "summary.csv")
    assert len(df) == 4
    assert "seed" not in df.columns  # not swept: the same in every run
    assert {"noise.rate", "cl.action", "test_accuracy", "f1", "num_flagged"} <= set(df.columns)
    row = df[(df["noise.rate"] == 0.4) & (df["cl.action"] == "downweight")].iloc[0]
    assert row["test_accuracy"] == pytest.approx(0.93) and row["f1"] == pytest.approx(0.8)
    assert row["num_flagged"] == 13
    md = (sweep / "summary.md").read_text()
    assert md.count("\n") == 6 and "| noise.rate |" in md.replace("| run ", "")
    assert (sweep / "summary.png").stat().st_size > 1000


def test_missing_or_empty_sweep_is_a_clear_error(tmp_path, capsys):
    assert summarize.main([str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert summarize.main([str(tmp_path / "empty")]) == 2
    assert "no metrics.json" in capsys.readouterr().err


def test_x_that_is_not_swept_is_a_clear_error(tmp_path, capsys):
    sweep = tmp_path / "multirun"
    for i, fold in enumerate("01"):
        fake_job(sweep, i, [f"fold={fold}", "noise.rate=0.2"], acc=0.9, f1=0.5)
    assert summarize.main([str(sweep), "--x", "noise.rate"]) == 2
    err = capsys.readouterr().err
    assert "--x noise.rate is not swept" in err and "fold" in err
    assert not (sweep / "summary.csv").exists()
    assert summarize.main([str(sweep), "--x", "fold"]) == 0


def test_numeric_overrides_sort_as_numbers(tmp_path):
    sweep = tmp_path / "multirun"
    for i, epochs in enumerate(("5", "20", "10")):
        fake_job(sweep, i, [f"trainer.max_epochs={epochs}"], acc=0.9, f1=0.5)
    df = summarize.collect(sweep)
    assert df["trainer.max_epochs"].tolist() == [5, 10, 20]  # not "10", "20", "5"
