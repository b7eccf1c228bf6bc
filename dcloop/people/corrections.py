"""Corrections back in: a reviewed CSV or a Label Studio export becomes a new label file.

The new file lists every training row with its label and where the label came from
(:data:`~dcloop.data.labelfile.LABEL_FILE_COLUMNS`). The original labels and any
earlier label file are never modified: the result goes to a new path, written
atomically, and only after the whole input was checked.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from dcloop._checks import parse_class_labels
from dcloop.csvsafe import read_csv
from dcloop.data.labelfile import (
    LABEL_FILE_COLUMNS,
    check_columns,
    check_sources,
    fingerprint,
    parse_index,
    read_label_file,
)
from dcloop.people.runconfig import run_label_file
from dcloop.results import write_csv

log = logging.getLogger(__name__)


@dataclass
class Decision:
    """People's verdicts read from one file, all rows already checked.

    Attributes:
        index: ``(M,)`` int64 rows decided.
        label: ``(M,)`` int64 the label people chose.
        by: ``(M,)`` who decided (annotator, Label Studio user, or the file).
        at: ``(M,)`` ISO-8601 time of the decision.
        from_file: the file read.
    """

    index: np.ndarray
    label: np.ndarray
    by: list[str]
    at: list[str]
    from_file: str


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run_class_names(run_dir: str | os.PathLike) -> list[str]:
    """Class names of a run (``class_report.csv``), else ``0..C-1`` from ``oof_probs.npy``."""
    run_dir = Path(run_dir)
    report = run_dir / "class_report.csv"
    if report.is_file():
        return read_csv(report, dtype={"name": str})["name"].tolist()
    probs = run_dir / "oof_probs.npy"
    if probs.is_file():
        return [str(k) for k in range(np.load(probs, mmap_mode="r").shape[1])]
    raise FileNotFoundError(f"{run_dir} is not a dcloop run directory (no class_report.csv)")


def base_labels(run_dir: str | os.PathLike, base: str | os.PathLike | None = None) -> pd.DataFrame:
    """The labels the run trained on, with provenance, one row per training sample.

    Starts from the run's ``labels.csv``. If ``base`` is given, or the run itself used a
    label file (``data.labels`` in its ``config.yaml``), that file's provenance is kept for
    the rows it lists, so a chain of corrections keeps its history.

    Returns:
        A frame with :data:`LABEL_FILE_COLUMNS`, sorted by ``index``.
    """
    run_dir = Path(run_dir)
    path = run_dir / "labels.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a dcloop run directory (no labels.csv)")
    runs = read_csv(path, dtype={"source": str}).sort_values("index")
    df = pd.DataFrame(
        {
            "index": runs["index"].to_numpy(np.int64),
            "source": runs["source"].to_numpy(),
            "label": runs["given_label"].to_numpy(np.int64),
            "original_label": runs["given_label"].to_numpy(np.int64),
            "status": "unchanged",
            "changed_by": "",
            "changed_at": "",
            "from_file": "",
        }
    )
    if base is None:
        used = run_label_file(run_dir)
        if used and Path(used).is_file():
            base = used
        elif used:
            log.warning("the run's label file %s is gone: its provenance is not carried", used)
    if base is not None:
        names = run_class_names(run_dir)
        over = read_label_file(base, df["label"].to_numpy(), names, df["source"].tolist())
        prev = read_csv(base, dtype=str).set_index(over.rows)
        df["label"] = over.labels
        if "original_label" in prev.columns:
            orig = pd.to_numeric(prev["original_label"], errors="coerce")
            ok = orig.notna().to_numpy()
            df.loc[over.rows[ok], "original_label"] = orig[ok].to_numpy(np.int64)
        for col in ("status", "changed_by", "changed_at", "from_file"):
            if col in prev.columns:
                df.loc[over.rows, col] = prev[col].fillna("").to_numpy()
        if "weight" in prev.columns:
            df["weight"] = 1.0
            df.loc[over.rows, "weight"] = pd.to_numeric(prev["weight"]).fillna(1.0).to_numpy()
    return df


def read_corrections_csv(
    path: str | os.PathLike,
    base: pd.DataFrame,
    class_names: Sequence[str],
    *,
    by: str | None = None,
) -> Decision:
    """People's labels from a reviewed relabel-queue CSV.

    Required columns ``index`` and ``label`` (class name or id; a blank ``label`` means
    "not reviewed" and the row is skipped). Optional: ``source`` (checked), ``annotator``
    (who decided; else ``by`` or the file name), ``changed_at``.

    Raises:
        FileNotFoundError, ValueError: see :func:`import_corrections`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"corrections file not found: {path}")
    what = f"corrections file {path}"
    try:
        df = read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ValueError(f"{what}: not a readable CSV ({err})") from err
    check_columns(df, ["index", "label"], what=what)
    idx = parse_index(df["index"], len(base), what=what)
    if "source" in df.columns:
        check_sources(idx, df["source"].replace("", np.nan).tolist(), base["source"], what=what)
    keep = (df["label"].str.strip() != "").to_numpy()
    # blank labels (no decision) are left out; a placeholder keeps the rows of the messages
    filled = df["label"].where(keep, str(class_names[0])).tolist()
    labels = parse_class_labels(filled, class_names, where=what, row_offset=2)[0][keep]
    who = by or f"csv:{path.name}"
    if "annotator" in df.columns:
        names = df["annotator"].str.strip()
        by_col = names.where(names != "", who).tolist()
    else:
        by_col = [who] * len(df)
    now = _now()
    at = (
        df["changed_at"].where(df["changed_at"] != "", now).tolist() if "changed_at" in df else None
    )
    at = at or [now] * len(df)
    return Decision(
        idx[keep],
        labels,
        [b for b, k in zip(by_col, keep, strict=True) if k],
        [a for a, k in zip(at, keep, strict=True) if k],
        str(path),
    )


def _user(annotation: dict) -> str:
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        who = who.get("email") or who.get("id")
    return f"labelstudio:{who}" if who is not None else "labelstudio"


def _annotations(task: dict, *, what: str) -> list[dict]:
    """A task's annotations, each with a ``result`` list of dicts; errors name the task."""
    anns = task.get("annotations")
    if anns is None:
        return []
    if not isinstance(anns, list) or not all(isinstance(a, dict) for a in anns):
        raise ValueError(
            f"{what}: 'annotations' is {_short(anns)}; expected a list of annotation objects "
            "(Label Studio 'JSON' export)"
        )
    out = []
    for a in anns:
        result = a.get("result")
        if result is None:
            result = []
        if not isinstance(result, list) or not all(isinstance(r, dict) for r in result):
            raise ValueError(
                f"{what}: annotation {a.get('id', '?')!r} has result {_short(result)}; expected "
                "a list of result objects"
            )
        out.append({**a, "result": result})
    return out


def _short(value, limit: int = 60) -> str:
    s = repr(value)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def read_labelstudio_export(
    path: str | os.PathLike, base: pd.DataFrame, class_names: Sequence[str]
) -> Decision:
    """People's labels from a Label Studio JSON export of tasks made by ``dcloop-export``.

    Each task needs ``data.index``; its latest annotation that is not cancelled and holds
    a ``choices`` result gives the label. Tasks without such an annotation are skipped.

    Raises:
        FileNotFoundError, ValueError: see :func:`import_corrections`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Label Studio export not found: {path}")
    what = f"Label Studio export {path}"
    try:
        tasks = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{what}: not valid JSON ({err})") from err
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise ValueError(f"{what}: expected a JSON list of tasks (Label Studio 'JSON' export)")
    rows, labels, by, at = [], [], [], []
    for k, task in enumerate(tasks):
        data = task.get("data")
        if not isinstance(data, dict) or "index" not in data:
            raise ValueError(
                f"{what}: task {task.get('id', k)!r} has no data.index; import tasks "
                "written by dcloop-export (its 'index' field identifies the sample)"
            )
        tid = f"task {task.get('id', k)!r} (index {data['index']!r})"
        done = [
            a
            for a in _annotations(task, what=f"{what}: {tid}")
            if not a.get("was_cancelled") and any(r.get("type") == "choices" for r in a["result"])
        ]
        if not done:
            continue
        last = max(done, key=lambda a: str(a.get("updated_at") or a.get("created_at") or ""))
        choice = next(r for r in last["result"] if r.get("type") == "choices")
        value = choice.get("value")
        picked = value.get("choices") if isinstance(value, dict) else None
        if not isinstance(picked, list):
            raise ValueError(
                f"{what}: {tid} has a choices result with value {value!r}; expected "
                '{"choices": ["<label>"]}'
            )
        if len(picked) != 1:
            raise ValueError(
                f"{what}: {tid} has {len(picked)} choices {picked}; expected exactly one label"
            )
        rows.append(data["index"])
        labels.append(picked[0])
        by.append(_user(last))
        at.append(str(last.get("updated_at") or last.get("created_at") or _now()))
        if "source" in data:
            check_sources(
                parse_index(pd.Series([data["index"]]), len(base), what=what),
                [data["source"]],
                base["source"],
                what=what,
            )
    idx = parse_index(pd.Series(rows, dtype=object), len(base), what=what)
    ids, _ = parse_class_labels(labels, class_names, where=what)
    return Decision(idx, ids, by, at, str(path))


def apply_decision(base: pd.DataFrame, decision: Decision) -> pd.DataFrame:
    """A new label table: ``base`` with people's labels and their provenance.

    A row people kept at its current label becomes ``confirmed``; a changed one
    ``corrected``. Rows not in ``decision`` keep their label and provenance.
    """
    out = base.copy()
    pos = out.index[out["index"].isin(decision.index)]
    order = pd.Series(range(len(decision.index)), index=decision.index)
    k = order.loc[out.loc[pos, "index"]].to_numpy()
    current = out.loc[pos, "label"].to_numpy()
    new = decision.label[k]
    out.loc[pos, "label"] = new
    out.loc[pos, "status"] = np.where(new == current, "confirmed", "corrected")
    out.loc[pos, "changed_by"] = np.asarray(decision.by, dtype=object)[k]
    out.loc[pos, "changed_at"] = np.asarray(decision.at, dtype=object)[k]
    out.loc[pos, "from_file"] = decision.from_file
    return out


def import_corrections(
    run_dir: str | os.PathLike,
    corrections: str | os.PathLike,
    out: str | os.PathLike,
    *,
    base: str | os.PathLike | None = None,
    by: str | None = None,
) -> tuple[Path, dict[str, int]]:
    """Read people's corrections and write a new label file with provenance.

    Args:
        run_dir: the run whose relabel queue people reviewed.
        corrections: a reviewed CSV (``.csv``) or a Label Studio JSON export (``.json``).
        out: the new label file; must not exist yet and must differ from every input.
        base: an earlier label file to build on (default: the one the run used, if any).
        by: who decided, for CSV rows without an ``annotator`` column.

    Returns:
        ``(path written, counts)`` with counts ``confirmed``, ``corrected`` (this import)
        and ``rows``.

    Raises:
        FileNotFoundError: the run, the corrections or the base file is missing.
        ValueError: wrong columns, unknown ids, unknown labels, duplicate ids, a source
            that does not match, or an output path that exists or is an input. Nothing is
            written then.
    """
    out, corrections = Path(out), Path(corrections)
    inputs = [Path(run_dir) / "labels.csv", corrections] + ([Path(base)] if base else [])
    if any(out.resolve() == p.resolve() for p in inputs):
        raise ValueError(f"output {out} is one of the input files; choose a new path")
    if out.exists():
        raise ValueError(f"output {out} already exists; label files are never overwritten")
    table = base_labels(run_dir, base)
    names = run_class_names(run_dir)
    if corrections.suffix.lower() == ".json":
        decision = read_labelstudio_export(corrections, table, names)
    elif corrections.suffix.lower() == ".csv":
        decision = read_corrections_csv(corrections, table, names, by=by)
    else:
        raise ValueError(
            f"corrections file {corrections}: unknown type {corrections.suffix!r}; expected "
            ".csv (reviewed relabel queue) or .json (Label Studio export)"
        )
    new = apply_decision(table, decision)
    new["fingerprint"] = [fingerprint(str(s)) for s in new["source"]]  # a moved folder still fits
    cols = list(LABEL_FILE_COLUMNS) + [c for c in new.columns if c not in LABEL_FILE_COLUMNS]
    write_csv(new[cols], out)
    touched = new["index"].isin(decision.index)
    counts = {
        "confirmed": int((touched & (new["status"] == "confirmed")).sum()),
        "corrected": int((touched & (new["status"] == "corrected")).sum()),
        "rows": len(new),
        # the whole file, earlier reviews included: what the next run's label-file line counts
        "file_confirmed": int((new["status"] == "confirmed").sum()),
        "file_corrected": int((new["status"] == "corrected").sum()),
    }
    log.info("wrote %s: %s", out, counts)
    return out, counts
