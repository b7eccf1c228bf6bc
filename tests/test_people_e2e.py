"""The whole loop through train(): run -> report + queue -> people -> import -> next run."""

import pandas as pd
import pytest

from dcloop.console import summarize
from dcloop.people.cli import export_main, import_main
from dcloop.train import train

from conftest import RUN_QUIET, compose_dcloop

QUIET = [*RUN_QUIET]
FAST = ["model=mlp", "trainer.max_epochs=3", "cl.warmup_epochs=1", "folds=3"]


def cfg_for(out, *overrides):
    return compose_dcloop(out, *QUIET, *FAST, *overrides)


@pytest.mark.slow
def test_people_loop_end_to_end(tmp_path, capsys):
    run1 = tmp_path / "run1"
    metrics1 = train(cfg_for(run1))
    html = (run1 / "report.html").read_text()
    assert "The 24 worst samples" in html and html.count("thumbnail of sample") == 24
    assert export_main([str(run1)]) == 0
    queue = pd.read_csv(run1 / "relabel" / "relabel_queue.csv")
    truth = pd.read_csv(run1 / "labels.csv").set_index("index")["true_label"]
    # people look at the 30 worst: they keep the given label of the first 10 (even where
    # it is wrong) and write the true label for the other 20
    queue = queue.head(30)
    queue["label"] = [truth[i] for i in queue["index"]]
    queue.loc[:9, "label"] = queue.loc[:9, "given_label"]
    queue.to_csv(tmp_path / "reviewed.csv", index=False)
    labels = tmp_path / "labels_v1.csv"
    assert import_main([str(run1), str(tmp_path / "reviewed.csv"), "--out", str(labels)]) == 0
    out = capsys.readouterr().out
    assert f"data.labels={labels}" in out  # the next command to run
    assert f"report      {run1 / 'report.html'}" in summarize(run1, metrics1)  # the CLI's line

    run2 = tmp_path / "run2"
    metrics = train(cfg_for(run2, f"data.labels={labels}", "report=false"))
    assert not (run2 / "report.html").exists()
    issues = pd.read_csv(run2 / "label_issues.csv").set_index("index")
    confirmed = queue["index"][:10]
    corrected = queue["index"][10:]
    assert not issues.loc[confirmed, "flagged"].any()  # people confirmed them: never flagged
    assert issues.loc[confirmed, "first_flagged_epoch"].isna().all()  # empty: never flagged
    assert (
        issues.loc[corrected, "given_label"] == queue.set_index("index").loc[corrected, "label"]
    ).all()
    assert (issues.loc[corrected, "given_label"] == issues.loc[corrected, "true_label"]).all()
    first = pd.read_csv(run1 / "labels.csv")
    assert metrics["noise_injected"]["num_noisy"] == first["is_noisy"].sum() - (
        queue["index"][10:].map(lambda i: first.loc[i, "is_noisy"]).sum()
    )
