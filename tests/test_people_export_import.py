"""Relabel queue out, corrections back in: round trip, provenance, malformed input."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from people_run import make_run

from dcloop.people.cli import export_main, import_main
from dcloop.people.corrections import import_corrections
from dcloop.people.export import export_queue, relabel_queue


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    make_run(d)
    return d


def test_queue_is_flagged_worst_first(run):
    issues = pd.read_csv(run / "label_issues.csv")
    q = relabel_queue(run)
    assert len(q) == issues["flagged"].sum() > 100
    assert q["quality"].is_monotonic_increasing
    assert (q["rank"] == np.arange(1, len(q) + 1)).all()
    flagged = set(issues.loc[issues["flagged"], "index"])
    assert set(q["index"]) == flagged
    assert len(relabel_queue(run, top=7)) == 7
    assert len(relabel_queue(run, everything=True)) == len(issues)


def test_export_writes_csv_and_labelstudio_tasks(run, tmp_path, capsys):
    assert export_main([str(run), "--out", str(tmp_path), "--top", "5"]) == 0
    assert "5 samples to review" in capsys.readouterr().out
    q = pd.read_csv(tmp_path / "relabel_queue.csv")
    tasks = json.loads((tmp_path / "relabel_queue_labelstudio.json").read_text())
    assert len(tasks) == len(q) == 5
    first, row = tasks[0], q.iloc[0]
    assert first["data"]["index"] == row["index"]
    assert first["data"]["image"] == row["source"]
    pred = first["predictions"][0]["result"][0]
    assert pred["value"]["choices"] == [str(row["suggested_name"])]
    assert pred["from_name"] == "label" and pred["to_name"] == "image"
    xml = (tmp_path / "labelstudio_config.xml").read_text()
    assert '<Choices name="label" toName="image"' in xml and '<Choice value="9"/>' in xml


def _reviewed(run, path, n=12):
    """People review the n worst: the first three keep the given label, one is left
    blank, the rest get the true label."""
    q = relabel_queue(run).head(n)
    truth = pd.read_csv(run / "labels.csv").set_index("index")["true_label"]
    q["label"] = [str(truth[i]) for i in q["index"]]
    q.loc[:2, "label"] = q.loc[:2, "given_name"].astype(str)
    q.loc[3, "label"] = ""
    q["annotator"] = "alice"
    q.to_csv(path, index=False)
    return q


def test_csv_round_trip_with_provenance(run, tmp_path, capsys):
    q = _reviewed(run, tmp_path / "reviewed.csv")
    before = (run / "labels.csv").read_bytes()
    out = tmp_path / "labels_v1.csv"
    assert import_main([str(run), str(tmp_path / "reviewed.csv"), "--out", str(out)]) == 0
    assert " corrected, 3 confirmed" in capsys.readouterr().out
    assert (run / "labels.csv").read_bytes() == before  # the original is untouched
    new = pd.read_csv(out).set_index("index")
    assert len(new) == len(pd.read_csv(run / "labels.csv"))
    confirmed = q["index"][:3].tolist()
    corrected = [
        i
        for i, g, t in zip(q["index"][4:], q["given_label"][4:], q["label"][4:], strict=True)
        if int(t) != g
    ]
    assert (new.loc[confirmed, "status"] == "confirmed").all()
    assert (new.loc[corrected, "status"] == "corrected").all()
    assert (
        new.loc[corrected, "label"] == q.set_index("index").loc[corrected, "label"].astype(int)
    ).all()
    assert new.loc[q["index"][3], "status"] == "unchanged"  # blank = not reviewed
    assert (new.loc[confirmed + corrected, "changed_by"] == "alice").all()
    assert new.loc[corrected, "from_file"].str.endswith("reviewed.csv").all()
    assert new.loc[corrected, "changed_at"].str.match(r"\d{4}-\d\d-\d\dT").all()
    assert (new.loc[corrected, "original_label"] != new.loc[corrected, "label"]).all()
    untouched = ~new.index.isin(q["index"])
    assert (new.loc[untouched, "status"] == "unchanged").all()
    assert new.loc[untouched, "changed_by"].isna().all()


def test_chained_import_keeps_history(run, tmp_path):
    _reviewed(run, tmp_path / "r1.csv")
    v1, _ = import_corrections(run, tmp_path / "r1.csv", tmp_path / "v1.csv")
    q1 = pd.read_csv(tmp_path / "r1.csv")
    i = int(q1["index"][5])  # corrected in v1; bob now confirms that correction
    pd.DataFrame({"index": [i], "label": [q1["label"][5]], "annotator": ["bob"]}).to_csv(
        tmp_path / "r2.csv", index=False
    )
    v2, counts = import_corrections(run, tmp_path / "r2.csv", tmp_path / "v2.csv", base=v1)
    v1_status = pd.read_csv(v1)["status"]
    assert counts == {
        "confirmed": 1,
        "corrected": 0,
        "rows": len(v1_status),
        "file_confirmed": int((v1_status == "confirmed").sum()) + 1,
        "file_corrected": int((v1_status == "corrected").sum()) - 1,
    }
    a, b = pd.read_csv(v1).set_index("index"), pd.read_csv(v2).set_index("index")
    assert b.loc[i, "changed_by"] == "bob" and b.loc[i, "status"] == "confirmed"
    assert b.loc[i, "original_label"] == a.loc[i, "original_label"] != b.loc[i, "label"]
    others = b.index != i
    pd.testing.assert_frame_equal(a[others], b[others])  # earlier provenance carried over


def _labelstudio_export(run, path, picks):
    tasks = json.loads((export_queue(run, path.parent / "q")["labelstudio"]).read_text())
    for k, (task, pick) in enumerate(zip(tasks, picks, strict=False)):
        task["id"] = 100 + k
        old = {
            "completed_by": {"email": "old@x"},
            "updated_at": "2026-01-01T00:00:00Z",
            "result": [{"type": "choices", "value": {"choices": ["0"]}}],
        }
        new = {
            "completed_by": {"email": "carol@x"},
            "updated_at": "2026-02-01T00:00:00Z",
            "result": [{"type": "choices", "value": {"choices": [pick]}}],
        }
        task["annotations"] = [new, old]  # the latest annotation wins, whatever the order
    path.write_text(json.dumps(tasks))
    return tasks


def test_labelstudio_round_trip(run, tmp_path):
    q = relabel_queue(run).head(4)
    picks = [str(q["given_name"][0]), "7", "3", "1"]
    _labelstudio_export(run, tmp_path / "export.json", picks)
    out, counts = import_corrections(run, tmp_path / "export.json", tmp_path / "v.csv")
    new = pd.read_csv(out).set_index("index")
    rows = q["index"].tolist()
    assert new.loc[rows[0], "status"] == "confirmed"
    assert new.loc[rows, "label"].tolist() == [int(p) for p in picks]
    assert (new.loc[rows, "changed_by"] == "labelstudio:carol@x").all()
    assert (new.loc[rows, "changed_at"] == "2026-02-01T00:00:00Z").all()
    same = sum(int(p) == g for p, g in zip(picks, q["given_label"], strict=True))
    assert same >= 1 and counts["confirmed"] == same and counts["corrected"] == 4 - same


BAD_CSV = {
    "unknown id": ("index,label\n0,3\n999999,4\n", "unknown id.*999999"),
    "unknown label": ("index,label\n0,3\n1,cat\n", "unknown label.*'cat'"),
    "duplicate": ("index,label\n5,3\n5,4\n", "duplicate id.*5"),
    "wrong columns": ("idx,new_label\n0,3\n", r"missing column.*\['index', 'label'\].*idx"),
    "label out of range": ("index,label\n0,10\n", "unknown label.*'10'"),
    "not an int": ("index,label\nabc,3\n", "'abc' are not integers"),
    "source mismatch": ("index,label,source\n0,3,digits:99999\n", "source mismatch.*index 0"),
}


@pytest.mark.parametrize("case", sorted(BAD_CSV))
def test_malformed_csv_is_rejected_and_nothing_written(run, tmp_path, case):
    text, msg = BAD_CSV[case]
    (tmp_path / "bad.csv").write_text(text)
    out = tmp_path / "new.csv"
    with pytest.raises(ValueError, match=msg):
        import_corrections(run, tmp_path / "bad.csv", out)
    assert not out.exists()
    assert not list(tmp_path.glob(".new.csv*"))  # no temporary file left behind


BAD_LS = {
    "not a list": ({"data": {}}, "expected a JSON list of tasks"),
    "no index": (
        [{"id": 3, "data": {"image": "x"}, "annotations": []}],
        "task 3 has no data.index",
    ),
    "unknown id": (
        [
            {
                "data": {"index": 10**6},
                "annotations": [{"result": [{"type": "choices", "value": {"choices": ["1"]}}]}],
            }
        ],
        "unknown id",
    ),
    "unknown label": (
        [
            {
                "data": {"index": 1},
                "annotations": [{"result": [{"type": "choices", "value": {"choices": ["dog"]}}]}],
            }
        ],
        "'dog'",
    ),
    "duplicate": (
        [
            {
                "data": {"index": 1},
                "annotations": [{"result": [{"type": "choices", "value": {"choices": ["1"]}}]}],
            }
        ]
        * 2,
        "duplicate id.*1",
    ),
    "annotations not a list": (
        [{"id": 7, "data": {"index": 1}, "annotations": "oops"}],
        r"task 7 \(index 1\): 'annotations' is 'oops'; expected a list of annotation objects",
    ),
    "result not a list": (
        [{"id": 7, "data": {"index": 1}, "annotations": [{"id": 2, "result": {"x": 1}}]}],
        r"task 7 \(index 1\): annotation 2 has result \{'x': 1\}; expected a list",
    ),
    "value null": (
        [
            {
                "id": 8,
                "data": {"index": 2},
                "annotations": [{"result": [{"type": "choices", "value": None}]}],
            }
        ],
        r"task 8 \(index 2\) has a choices result with value None; expected "
        r"\{\"choices\": \[\"<label>\"\]\}",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_LS))
def test_malformed_labelstudio_export_is_rejected(run, tmp_path, case):
    obj, msg = BAD_LS[case]
    (tmp_path / "bad.json").write_text(json.dumps(obj))
    with pytest.raises(ValueError, match=msg):
        import_corrections(run, tmp_path / "bad.json", tmp_path / "new.csv")
    assert not (tmp_path / "new.csv").exists()


def test_never_overwrites_and_cli_names_the_problem(run, tmp_path, capsys):
    (tmp_path / "ok.csv").write_text("index,label\n0,3\n")
    with pytest.raises(ValueError, match="one of the input files"):
        import_corrections(run, tmp_path / "ok.csv", tmp_path / "ok.csv")
    with pytest.raises(ValueError, match="one of the input files"):
        import_corrections(run, tmp_path / "ok.csv", run / "labels.csv")
    (tmp_path / "exists.csv").write_text("keep me")
    with pytest.raises(ValueError, match="already exists"):
        import_corrections(run, tmp_path / "ok.csv", tmp_path / "exists.csv")
    assert (tmp_path / "exists.csv").read_text() == "keep me"
    (tmp_path / "bad.csv").write_text("index,label\n0,3\n0,4\n")
    with pytest.raises(SystemExit) as exc:
        import_main([str(run), str(tmp_path / "bad.csv"), "--out", str(tmp_path / "n.csv")])
    assert exc.value.code == 2
    assert "duplicate id(s) 0" in capsys.readouterr().err
    assert not (tmp_path / "n.csv").exists()
    with pytest.raises(FileNotFoundError, match="no_such.csv"):
        import_corrections(run, tmp_path / "no_such.csv", tmp_path / "n.csv")


def test_export_can_embed_thumbnails_for_in_memory_data(run, tmp_path):
    assert export_main([str(run), "--out", str(tmp_path), "--top", "3", "--embed"]) == 0
    tasks = json.loads((tmp_path / "relabel_queue_labelstudio.json").read_text())
    assert len(tasks) == 3
    assert all(t["data"]["image"].startswith("data:image/png;base64,") for t in tasks)
    assert tasks[0]["data"]["source"].startswith("digits:")  # the id is still there


def test_import_cli_malformed_labelstudio_is_one_line_exit_2(run, tmp_path, capsys):
    obj = [{"id": 7, "data": {"index": 1}, "annotations": "oops"}]
    (tmp_path / "bad.json").write_text(json.dumps(obj))
    with pytest.raises(SystemExit) as exc:
        import_main([str(run), str(tmp_path / "bad.json"), "--out", str(tmp_path / "n.csv")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "task 7" in err[0] and "'annotations' is 'oops'" in err[0]


@pytest.mark.parametrize("how", ["read-only folder", "parent is a file"])
def test_import_cli_unwritable_out_is_one_line_exit_2(run, tmp_path, capsys, monkeypatch, how):
    import os
    import tempfile

    (tmp_path / "ok.csv").write_text("index,label\n0,3\n")
    if how == "read-only folder":
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
        if os.geteuid() == 0:  # root writes anywhere: refuse as a read-only mount would
            real = tempfile.mkstemp

            def mkstemp(*a, dir=None, **kw):
                if Path(dir) == folder:
                    raise PermissionError(13, "Permission denied", str(folder / ".x.tmp"))
                return real(*a, dir=dir, **kw)

            monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
        out = folder / "labels.csv"
    else:
        (tmp_path / "afile").write_text("x")
        out = tmp_path / "afile" / "labels.csv"
    try:
        with pytest.raises(SystemExit) as exc:
            import_main([str(run), str(tmp_path / "ok.csv"), "--out", str(out)])
    finally:
        if (tmp_path / "ro").exists():
            (tmp_path / "ro").chmod(0o755)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"dcloop-import: error: cannot write {out}: ")
    assert ".tmp" not in err[0]
    if how == "read-only folder":
        assert "Permission denied" in err[0] and "read-only" in err[0]
    else:
        assert err[0].endswith(f"{tmp_path / 'afile'} is a file, not a folder")
