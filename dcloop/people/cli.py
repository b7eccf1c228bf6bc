"""Console scripts for people in the loop: ``dcloop-export``, ``dcloop-import``,
``dcloop-annotators`` and ``dcloop-report``. Each ``*_main(argv=None)`` returns 0 on
success; bad input exits with status 2 and a message that names the problem."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

from dcloop.argtypes import number
from dcloop.console import emit
from dcloop.errors import quote, user_error_message

# pandas, torch and the data layer are imported in the commands' bodies: `--help` and a bad
# argument answer in a fraction of a second (scripts/bench_cli_start.py).

log = logging.getLogger(__name__)


def _run(prog: str, parser: argparse.ArgumentParser, argv, body: Callable) -> int:
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    run_dir = getattr(args, "run_dir", None)
    try:
        missing = run_dir is not None and not Path(run_dir).is_dir()  # before pandas and torch
    except OSError as err:  # a name too long for the file system (Python 3.11 raises)
        sys.stderr.write(f"{prog}: error: {_message(err)}\n")
        return 2
    if missing:
        message = user_error_message(FileNotFoundError(f"run folder not found: {run_dir}"))
        sys.stderr.write(f"{prog}: error: {message}; expected a finished dcloop run folder\n")
        return 2
    try:
        body(args)
    except (ValueError, OSError) as err:  # bad input, unreadable or unwritable files
        sys.stderr.write(f"{prog}: error: {_message(err)}\n")
        return 2
    return 0


def _message(err: BaseException) -> str:
    """One line for ``err``, each value in it quoted short (a 100,000-character path too)."""
    return user_error_message(err) or " ".join(quote(w) for w in str(err).split())


def _exit(code: int) -> int:
    if code:
        raise SystemExit(code)
    return code


# ----------------------------------------------------------------------- export
def export_main(argv: Sequence[str] | None = None) -> int:
    """``dcloop-export RUN_DIR``: the relabel queue as CSV and Label Studio JSON."""
    p = argparse.ArgumentParser(
        prog="dcloop-export",
        description="Write a run's flagged samples, worst first, as relabel_queue.csv and "
        "Label Studio import JSON (suggested label as a prediction).",
    )
    p.add_argument("run_dir", help="a finished dcloop run directory")
    p.add_argument("--out", help="output folder (default: RUN_DIR/relabel)")
    p.add_argument("--top", type=number(int, 1), default=None, help="only the N worst samples")
    p.add_argument("--all", action="store_true", help="every sample, not only flagged ones")
    p.add_argument(
        "--url-prefix",
        default="",
        help="prefix for Label Studio file references, e.g. /data/local-files/?d=",
    )
    p.add_argument(
        "--embed",
        action="store_true",
        help="embed each sample's thumbnail (PNG data URI) in the Label Studio tasks, for "
        "in-memory data without files (e.g. digits)",
    )
    p.add_argument(
        "--health",
        action="store_true",
        help="also queue the outliers and near-duplicates data health flagged (data_issues/)",
    )

    def body(a):
        from dcloop.csvsafe import read_csv
        from dcloop.people.export import export_queue, relabel_queue, storage_root
        from dcloop.people.runconfig import load_train_dataset

        paths = export_queue(
            a.run_dir,
            a.out,
            top=a.top,
            everything=a.all,
            url_prefix=a.url_prefix,
            dataset=load_train_dataset(a.run_dir, required=True) if a.embed else None,
            health=a.health,
        )
        queue = relabel_queue(a.run_dir, top=a.top, everything=a.all, health=a.health)
        lines = [
            f"dcloop-export: {len(queue)} samples to review, worst first",
            f"  csv           {paths['csv']}  (fill in the 'label' column)",
            f"  label studio  {paths['labelstudio']}",
            f"  ls config     {paths['config']}",
        ]
        text = "text" in read_csv(paths["csv"], nrows=1).columns
        if not a.embed and not text and len(queue):
            root = storage_root(queue["source"].astype(str).tolist())
            if root is None:
                lines.append(
                    "  WARNING       the samples are not files on this machine (in-memory data "
                    "such as digits, or a moved folder): Label Studio will not show them; run "
                    "dcloop-export --embed to put each sample's picture into the tasks"
                )
            else:
                lines.append(
                    f"  storage       {root}  (connect a Label Studio Local Files storage on "
                    "this folder: docs/people.md, 'Label Studio, step by step')"
                )
        lines.append(
            f"  then          dcloop-import {a.run_dir} <reviewed.csv | label-studio-export.json>"
        )
        emit("\n".join(lines))

    return _exit(_run("dcloop-export", p, argv, body))


# ----------------------------------------------------------------------- import
def import_main(argv: Sequence[str] | None = None) -> int:
    """``dcloop-import RUN_DIR FILE``: corrections in, a new label file out."""
    p = argparse.ArgumentParser(
        prog="dcloop-import",
        description="Read a reviewed relabel_queue.csv or a Label Studio JSON export and write "
        "a NEW label file with provenance; train on it with data.labels=<file>.",
    )
    p.add_argument("run_dir", help="the run whose queue was reviewed")
    p.add_argument("corrections", help="reviewed .csv or Label Studio export .json")
    p.add_argument("--out", help="new label file (default: RUN_DIR/labels_corrected_<time>.csv)")
    p.add_argument("--base", help="an earlier label file to build on (default: the run's)")
    p.add_argument("--by", help="who reviewed (CSV rows without an 'annotator' column)")

    def body(a):
        from dcloop.people.corrections import import_corrections

        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        out = a.out or Path(a.run_dir) / f"labels_corrected_{stamp}.csv"
        path, counts = import_corrections(a.run_dir, a.corrections, out, base=a.base, by=a.by)
        total = (counts["file_corrected"], counts["file_confirmed"])
        earlier = (
            f"; with earlier reviews the file holds {total[0]} corrected, {total[1]} confirmed"
            if total != (counts["corrected"], counts["confirmed"])
            else ""
        )
        emit(
            f"dcloop-import: {counts['corrected']} corrected, {counts['confirmed']} confirmed "
            f"({counts['rows']} rows{earlier}; rows people checked are never flagged again)\n"
            f"  label file    {path}\n"
            f"  next run      dcloop data.labels={path.resolve()}"
        )

    return _exit(_run("dcloop-import", p, argv, body))


# ------------------------------------------------------------------- annotators
def annotators_main(argv: Sequence[str] | None = None) -> int:
    """``dcloop-annotators RUN_DIR ANNOTATIONS``: consensus of several annotators."""
    p = argparse.ArgumentParser(
        prog="dcloop-annotators",
        description="Consensus labels, per-item agreement and annotator quality from a long "
        "CSV (item, annotator, label), by cleanlab.multiannotator with the run's OOF "
        "probabilities and by plain majority vote.",
    )
    p.add_argument("run_dir", help="a finished run (its oof_probs.npy is the model)")
    p.add_argument("annotations", help="CSV with columns item, annotator, label")
    p.add_argument("--out", help="output folder (default: RUN_DIR/annotators)")
    p.add_argument(
        "--weighted",
        action="store_true",
        help="add the consensus quality as a 'weight' column to consensus_labels.csv",
    )
    p.add_argument("--seed", type=number(int, 0), default=0, help="majority-vote tie-break seed")
    p.add_argument(
        "--skip-unknown",
        action="store_true",
        help="leave out annotated items that are not training rows of the run (e.g. files it "
        "held out for validation) instead of failing",
    )
    p.add_argument("--no-report", action="store_true", help="do not re-render report.html")

    def body(a):
        import numpy as np
        import pandas as pd

        from dcloop.people.corrections import base_labels, run_class_names
        from dcloop.people.multiannotator import consensus, consensus_label_file, read_annotations
        from dcloop.people.runconfig import load_train_dataset
        from dcloop.results import write_csv, write_json

        run_dir = Path(a.run_dir)
        probs_path = run_dir / "oof_probs.npy"
        if not probs_path.is_file():
            raise FileNotFoundError(f"{run_dir} has no oof_probs.npy (not a finished run)")
        names = run_class_names(run_dir)
        base = base_labels(run_dir)
        probs = np.load(probs_path)
        long = read_annotations(
            a.annotations,
            names,
            len(base),
            base["source"].tolist(),
            skip_unknown=a.skip_unknown,
        )
        cons = consensus(long, probs, names, seed=a.seed)
        out = Path(a.out) if a.out else run_dir / "annotators"
        src, orig = base["source"].tolist(), base["label"].to_numpy()
        files = {
            "consensus_labels.csv": consensus_label_file(
                cons, src, orig, weighted=a.weighted, from_file=str(a.annotations)
            ),
            "majority_labels.csv": consensus_label_file(
                cons, src, orig, method="majority", from_file=str(a.annotations)
            ),
            "label_quality.csv": cons.items,
            "annotator_stats.csv": cons.annotators,
            "class_agreement.csv": cons.classes,
        }
        for name, df in files.items():
            write_csv(df, out / name)
        it = cons.items
        summary = {
            "items": len(it),
            "annotators": len(cons.annotators),
            "annotations": len(long),
            "consensus_differs_from_majority": int((it.consensus_label != it.majority_label).sum()),
            "model_agrees_with_consensus": float(it.model_agrees.mean()),
            "mean_annotator_agreement": float(it.annotator_agreement.mean()),
            "mean_consensus_quality": float(it.consensus_quality.mean()),
            "model_weight": cons.model_weight,
        }
        write_json(summary, out / "summary.json")
        lines = [
            f"dcloop-annotators: {summary['items']} items, {summary['annotators']} annotators, "
            f"{summary['annotations']} labels",
            f"  consensus     {out / 'consensus_labels.csv'} "
            f"({summary['consensus_differs_from_majority']} differ from majority vote)",
            f"  agreement     people {summary['mean_annotator_agreement']:.3f}, model with "
            f"consensus {summary['model_agrees_with_consensus']:.3f}",
            f"  train on it   dcloop data.labels={(out / 'consensus_labels.csv').resolve()}",
        ]
        if not a.no_report and (run_dir / "metrics.json").is_file():
            from dcloop.people.report import write_report

            lines.append(
                f"  report        {write_report(run_dir, dataset=load_train_dataset(run_dir))}"
            )
        emit("\n".join(lines))
        emit(pd.DataFrame(cons.annotators).to_string(index=False))

    return _exit(_run("dcloop-annotators", p, argv, body))


# ----------------------------------------------------------------------- report
def report_main(argv: Sequence[str] | None = None) -> int:
    """``dcloop-report RUN_DIR``: (re-)render ``report.html`` for a finished run."""
    p = argparse.ArgumentParser(
        prog="dcloop-report",
        description="Render RUN_DIR/report.html, one self-contained page (images embedded).",
    )
    p.add_argument("run_dir", help="a finished dcloop run directory")
    p.add_argument(
        "--worst", type=number(int, 0), default=24, help="samples in the gallery (default 24)"
    )
    p.add_argument("--out", help="output path (default: RUN_DIR/report.html)")
    p.add_argument("--no-thumbnails", action="store_true", help="do not load the data")

    def body(a):
        from dcloop.people.report import write_report
        from dcloop.people.runconfig import load_train_dataset

        ds = None if a.no_thumbnails else load_train_dataset(a.run_dir)
        emit(f"dcloop-report: {write_report(a.run_dir, dataset=ds, worst=a.worst, path=a.out)}")

    return _exit(_run("dcloop-report", p, argv, body))
