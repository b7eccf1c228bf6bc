"""Spreadsheet formula injection: no CSV dcloop writes for people starts a text cell with
``= + - @``, tab or CR; numbers stay numbers; dcloop's own readers get the original text."""

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dcloop.cl import verdict
from dcloop.csvsafe import TRIGGERS, escape_cell, neutralize, read_csv, restore, unescape_cell
from dcloop.data.labelfile import read_label_file
from dcloop.data.noise import NoiseResult, save_noise
from dcloop.folds import assign_folds
from dcloop.people.cli import annotators_main, import_main
from dcloop.people.corrections import base_labels
from dcloop.people.export import export_queue
from dcloop.results import write_csv, write_json, write_run_files
from dcloop.state import SampleTable

HOSTILE_NAMES = ["=cmd|' /C calc'!A0", "+SUM(1,2)", "@import", "-2+3"]
N_PER_CLASS = 12


def _is_plain_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def assert_no_formula(path: Path) -> list[list[str]]:
    """Every cell of ``path`` is safe in a spreadsheet; returns the rows."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    bad = [
        (r, c, cell)
        for r, row in enumerate(rows)
        for c, cell in enumerate(row)
        if cell.startswith(TRIGGERS) and not _is_plain_number(cell)
    ]
    assert not bad, f"{path.name}: formula cells {bad[:5]}"
    return rows


def test_escape_rule_and_round_trip():
    for v in ["=1+1", "+x", "-x", "@x", "\tx", "\rx", "'=x", "''@x"]:
        assert escape_cell(v).startswith("'")
        assert unescape_cell(escape_cell(v)) == v
    for v in ["cat", "", "'quoted", "a=b", "-1", "+2.5", "-1e-3", ".5", 3, -4.5, None]:
        assert escape_cell(v) == v  # text without a trigger, and numbers, stay as they are
        assert unescape_cell(escape_cell(v)) == v
    assert escape_cell("-2+3") == "'-2+3"  # a formula, not a number
    assert unescape_cell("=x") == "=x"  # a spreadsheet that dropped the quote on save
    df = pd.DataFrame({"t": ["=a", "b", "-1"], "n": [-1, 2, 3], "f": [-0.5, 1.0, np.nan]})
    out = neutralize(df)
    assert out["t"].tolist() == ["'=a", "b", "-1"]
    assert out["n"].tolist() == [-1, 2, 3] and out["n"].dtype == df["n"].dtype
    pd.testing.assert_frame_equal(restore(out), df)


def test_write_csv_keeps_numbers_and_reads_back(tmp_path):
    df = pd.DataFrame(
        {"name": ['=HYPERLINK("http://x")', "ok"], "epoch": [-1, 3], "q": [-0.25, 0.5]}
    )
    write_csv(df, tmp_path / "t.csv")
    rows = assert_no_formula(tmp_path / "t.csv")
    assert rows[1] == ['\'=HYPERLINK("http://x")', "-1", "-0.25"]
    pd.testing.assert_frame_equal(read_csv(tmp_path / "t.csv"), df)
    write_csv(df, tmp_path / "raw.csv", spreadsheet_safe=False)
    assert pd.read_csv(tmp_path / "raw.csv")["name"][0].startswith("=")


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory) -> Path:
    """A run whose class names and sources are formulas."""
    run = tmp_path_factory.mktemp("hostile") / "run"
    c = len(HOSTILE_NAMES)
    true = np.repeat(np.arange(c), N_PER_CLASS)
    given = true.copy()
    given[::7] = (true[::7] + 1) % c  # some wrong labels
    n = len(true)
    sources = [f"{'=-+@'[i % 4]}file{i}.png" if i % 3 else f"\tfile{i}.png" for i in range(n)]
    probs = np.full((n, c), 0.05)
    probs[np.arange(n), true] = 0.85
    probs = torch.tensor(probs / probs.sum(1, keepdims=True), dtype=torch.float32)
    table = SampleTable(given, assign_folds(given, 3, seed=0), true)
    result = verdict(table.labels, probs)
    table.record_flags(result.flags, result.quality, result.suggested, 0)
    assert table.flagged.any()
    run.mkdir(parents=True)
    nm = np.eye(c)
    save_noise(NoiseResult(given, true, given != true, nm, "none", 0.0, 0.0, 0), run, sources)
    write_run_files(run, table, probs, result, sources, HOSTILE_NAMES)
    write_json({"data": {"num_train": n}}, run / "metrics.json")
    return run


def test_run_tables_are_safe_and_read_back(hostile_run):
    for name in ("label_issues.csv", "class_report.csv", "noise_matrix.csv"):
        assert_no_formula(hostile_run / name)
    report = read_csv(hostile_run / "class_report.csv", dtype={"name": str})
    assert report["name"].tolist() == HOSTILE_NAMES
    issues = read_csv(hostile_run / "label_issues.csv", dtype={"source": str})
    assert issues["source"].str[0].isin(list("=-+@\t")).all()
    assert issues["first_flagged_epoch"].isna().any()  # no step: an empty cell, not -1
    assert (issues["first_flagged_epoch"].dropna() >= 0).all()  # numbers written as numbers
    raw = pd.read_csv(hostile_run / "label_issues.csv")
    assert raw["first_flagged_epoch"].dtype.kind in "if"  # numbers (blank cells: NaN)
    assert ",0.0," not in (hostile_run / "label_issues.csv").read_text()  # written as ints


def test_relabel_queue_and_import_round_trip(hostile_run, tmp_path, capsys):
    paths = export_queue(hostile_run, tmp_path / "q")
    rows = assert_no_formula(paths["csv"])
    assert rows[1][rows[0].index("source")].startswith("'")
    # a reviewer fills in labels and a hostile annotator name, as text editors keep it
    q = pd.read_csv(paths["csv"], dtype=str, keep_default_na=False)
    q["label"] = [HOSTILE_NAMES[i % len(HOSTILE_NAMES)] for i in range(len(q))]
    q["annotator"] = "=evil()"
    q.loc[0, "label"] = "'" + q.loc[0, "label"]  # quoted, as dcloop writes names
    q.to_csv(tmp_path / "reviewed.csv", index=False)  # raw, as a spreadsheet saves it
    out = tmp_path / "labels_new.csv"
    assert import_main([str(hostile_run), str(tmp_path / "reviewed.csv"), "--out", str(out)]) == 0
    capsys.readouterr()
    assert_no_formula(out)
    with open(out, newline="") as f:
        new_rows = list(csv.DictReader(f))
    changed = [r for r in new_rows if r["status"] in ("corrected", "confirmed")]
    assert changed and all(r["changed_by"] == "'=evil()" for r in changed)
    # dcloop reads its own file back to the original values
    labels_csv = read_csv(hostile_run / "labels.csv", dtype={"source": str})
    sources = labels_csv.sort_values("index")["source"].tolist()
    over = read_label_file(out, labels_csv["given_label"].to_numpy(), HOSTILE_NAMES, sources)
    rank = q["index"].astype(int).to_numpy()
    want = np.array([i % len(HOSTILE_NAMES) for i in range(len(q))])
    np.testing.assert_array_equal(over.labels[rank], want)
    chained = base_labels(hostile_run, out)
    assert set(chained.loc[chained["index"].isin(rank), "changed_by"]) == {"=evil()"}
    assert chained["source"].tolist() == sources


def test_labelstudio_tasks_keep_the_original_text(hostile_run, tmp_path):
    paths = export_queue(hostile_run, tmp_path / "q")
    tasks = json.loads(Path(paths["labelstudio"]).read_text())
    sources = set(read_csv(hostile_run / "labels.csv", dtype={"source": str})["source"])
    assert all(t["data"]["source"] in sources for t in tasks)  # JSON is not a spreadsheet


def test_annotator_tables_are_safe(hostile_run, tmp_path, capsys):
    labels_csv = read_csv(hostile_run / "labels.csv", dtype={"source": str})
    rows = []
    for i, src in enumerate(labels_csv["source"][:20]):
        for a in ("=alice", "+bob", "@carol"):
            rows.append({"item": src, "annotator": a, "label": HOSTILE_NAMES[i % 4]})
    pd.DataFrame(rows).to_csv(tmp_path / "ann.csv", index=False)
    out = tmp_path / "ann_out"
    argv = [str(hostile_run), str(tmp_path / "ann.csv"), "--out", str(out), "--no-report"]
    assert annotators_main([*argv, "--weighted"]) == 0
    capsys.readouterr()
    for name in (
        "consensus_labels.csv",
        "majority_labels.csv",
        "label_quality.csv",
        "annotator_stats.csv",
        "class_agreement.csv",
    ):
        assert_no_formula(out / name)
    stats = read_csv(out / "annotator_stats.csv", dtype={"annotator": str})
    assert sorted(stats["annotator"]) == ["+bob", "=alice", "@carol"]
    classes = read_csv(out / "class_agreement.csv", dtype={"name": str})
    assert classes["name"].tolist() == HOSTILE_NAMES
    over = read_label_file(
        out / "consensus_labels.csv",
        labels_csv["given_label"].to_numpy(),
        HOSTILE_NAMES,
        labels_csv["source"].tolist(),
    )
    assert over.rows.size == 20


def test_ner_tables_are_safe(tmp_path, capsys):
    from dcloop.beyond.cli import main as beyond_main
    from dcloop.beyond.ner import make_synthetic_conll, write_conll

    s, corrupted = make_synthetic_conll(40, noise_rate=0.1, seed=1)
    hostile = ["=SUM(A1)", "-LRB-", "+44", "@user"]
    for i, toks in enumerate(s.tokens):
        toks[0] = hostile[i % 4]
    write_conll(tmp_path / "a.conll", s)
    probs = []
    for i, lab in enumerate(s.labels):
        p = np.full((len(lab), 4), 0.02)
        p[np.arange(len(lab)), lab] = 0.94
        for si, ti in corrupted:
            if si == i:
                p[ti] = 0.02
                p[ti, (lab[ti] % 3) + 1] = 0.94
        probs.append(p)
    np.save(tmp_path / "p.npy", np.concatenate(probs))
    args = ["ner", str(tmp_path / "a.conll"), "--probs", str(tmp_path / "p.npy"), "--folds", "3"]
    assert beyond_main([*args, "--out", str(tmp_path / "o")]) == 0
    capsys.readouterr()
    for name in ("token_issues.csv", "sentences_ranked.csv", "span_issues.csv"):
        assert_no_formula(tmp_path / "o" / name)
    ranked = read_csv(tmp_path / "o" / "sentences_ranked.csv")
    assert ranked["text"].str.split().str[0].isin(hostile).all()
