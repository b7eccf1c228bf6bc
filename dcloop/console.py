"""The one place that writes for people on the console."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def emit(text: str) -> None:
    """Write ``text`` (plus a newline) to standard output."""
    sys.stdout.write(text.rstrip("\n") + "\n")
    sys.stdout.flush()


def run_summary(metrics: dict[str, Any], run_dir: Path, top: list[dict[str, Any]]) -> str:
    """A short, human summary of a finished run."""
    n, flagged = metrics["data"]["num_train"], metrics["cleaning"]["num_flagged"]
    lines = [
        "",
        "dcloop: run finished",
        f"  data        {metrics['data']['source']}: {n} training samples, "
        f"{metrics['data']['num_classes']} classes, K={metrics['cleaning']['num_folds']} folds",
    ]
    skipped = metrics["data"].get("num_skipped_files")
    if skipped:
        lines.append(
            f"  skipped     {skipped} unreadable file(s) left out (on_bad_file=skip); the list: "
            f"{Path(run_dir) / 'skipped_files.csv'}"
        )
    stop = metrics.get("early_stopping")
    if stop:
        lines.append(
            f"  stopped     early, at epoch {stop['epoch']} (EarlyStopping on {stop['monitor']}"
            + (f", best {stop['best']:.4f})" if stop.get("best") is not None else ")")
        )
    noise = metrics.get("noise_injected")
    if noise and noise.get("kind") != "none":
        lines.append(
            f"  injected    {noise['kind']} noise, {noise['num_noisy']} labels "
            f"({noise['rate_actual']:.1%}) made wrong on purpose"
        )
    elif noise and noise.get("num_noisy"):  # a truth manifest: real noise, scored
        lines.append(
            f"  injected    no noise injected; {noise['num_noisy']} labels "
            f"({noise['rate_actual']:.1%}) wrong by the truth manifest"
        )
    else:
        lines.append("  injected    no noise injected: your labels as given")
    what = (
        "samples flagged, not likely label errors: the run is too weak to judge (WARNING below)"
        if metrics.get("weak_run")
        else "likely label errors"
    )
    lines.append(
        f"  found       {flagged} {what} ({flagged / n:.1%}); estimated "
        f"noise rate {metrics['noise']['rate']:.1%}; action={metrics['cleaning']['action']}"
        + (
            " (relabel: acted-on rows train on the suggested label)"
            if metrics["cleaning"].get("relabel")
            else ""
        )
    )
    health = Path(run_dir) / "data_issues" / "summary.json"
    if health.is_file():  # the data_health callback (health=true)
        h = json.loads(health.read_text())
        by = f" (by {h['outlier_signal']})" if h.get("outlier_signal") else ""
        lines.append(
            f"  health      {_count(h.get('outliers', 0), 'outlier')}{by}, "
            f"{_count(h.get('near_duplicate_pairs', 0), 'near-duplicate pair')}, "
            f"{_count(h.get('leakage', '-'), 'test sample')} leaked, "
            f"{_count(h.get('underperforming_groups', 0), 'weak group')}, "
            f"{_count(h.get('test_only', '-'), 'test-only sample')} "
            f"({Path(run_dir) / 'data_issues'}/)"
        )
    det = metrics.get("detection")
    if det:
        lines.append(
            f"  detection   precision {det['precision']:.3f}  recall {det['recall']:.3f}"
            f"  F1 {det['f1']:.3f}  AUROC {det['auroc']:.3f}"
        )
    lines.append(test_line(metrics))
    if "refit_accuracy" in metrics["test"]:
        lines.append(
            f"  refit       accuracy {metrics['test']['refit_accuracy']:.4f} "
            "(one network retrained on the cleaned data)"
        )
    safety = metrics.get("safety")
    if safety:
        start = safety.get("start_epoch")
        lines.append(
            "  cleaning    "
            + (
                f"ready at epoch {safety['ready_epoch']}, acted from epoch {start}"
                if start is not None
                else "never acted (predictions never ready, detect-only, or backed off)"
            )
            + f"; {safety['backoffs']} back-off(s)"
        )
    if metrics.get("timing"):
        lines.append(timing_line(metrics["timing"]))
    cost = metrics.get("cost") or {}
    if cost.get("cpu_ratio") is not None:
        lines.append(
            f"  cost        {cost['cpu_ratio']:.1f}x the CPU seconds of one plain training run "
            f"({cost['cpu_s']:.0f} s; one plain run, timed on the student: "
            f"{cost['plain_cpu_s']:.0f} s)"
        )
    for warning in metrics.get("warnings") or []:
        lines.append(f"  WARNING     {warning}")
    if top:
        lines.append(
            "  worst       "
            + "; ".join(
                f"#{r['index']} {_name(r, 'given')}->{_name(r, 'suggested')} (q={r['quality']:.2f})"
                for r in top
            )
        )
    lines.append(
        f"  results     {run_dir}/ (label_issues.csv, class_report.csv, "
        "noise_matrix.csv, metrics.json)"
    )
    return "\n".join(lines)


def _count(n: Any, noun: str) -> str:
    """``"1 outlier"``, ``"3 outliers"``; a count that is not a number (``"-"``: not
    computed) keeps the plural."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _name(row: dict[str, Any], which: str) -> str:
    """A class as a person reads it: its name from ``label_issues.csv`` (the id without)."""
    name = row.get(f"{which}_name")
    return str(name) if name not in (None, "") else str(row[f"{which}_label"])


def test_line(metrics: dict[str, Any]) -> str:
    """The kept model's test accuracy, named; the ensemble's beside it when it is not kept."""
    test, kept = metrics["test"], metrics.get("kept") or {"model": "ensemble"}
    k = metrics["cleaning"]["num_folds"]
    ensemble = f"ensemble: mean softmax of the {k} fold replicas"
    if kept.get("replica_net"):  # model.replica_net: replicas of another size than model.net
        ensemble += " (" + ", ".join(f"{key} {v}" for key, v in kept["replica_net"].items()) + ")"
    if kept.get("replica_precision"):  # replica_precision: the replicas' own precision
        ensemble += f", trained at {kept['replica_precision']}"
    stopped = (kept.get("replica_stop") or {}).get("stopped_epoch")
    if stopped:  # replica_stop: the replicas stopped once their verdict held
        ensemble += f", stopped after epoch {stopped} (their verdict held)"
    if kept["model"] != "student":
        return f"  test        accuracy {test['accuracy']:.4f} ({ensemble}; the kept model)"
    rule = {
        "relabel": "flagged labels relabelled to the replicas' prediction",
        "soft": "flagged labels replaced by the replicas' softmax",
        "posterior": "every label replaced by its calibrated posterior",
        "forward": "every label through the calibrated noise matrix (forward correction)",
        "relabel_forward": "flagged labels relabelled, the others through the noise left",
        "drop": "flagged samples left out",
        "prune": "the loop's pruned samples left out",
        "given": "the given labels",
    }.get(kept.get("targets"), kept.get("targets"))
    source = kept.get("evidence", "oof")
    if source in ("knn", "blend") and kept.get("targets") in ("relabel", "relabel_forward"):
        rule = rule.replace(
            "the replicas' prediction",
            "their nearest neighbours' labels"
            if source == "knn"
            else "the replicas' prediction and their neighbours' labels",
        )
    auto = kept.get("auto")
    if auto:  # student.targets / student.evidence = auto: what it chose, and on what
        fit = auto.get("flagged_fit")
        seen = "no flagged sample" if fit is None else f"{fit:.0%} of the flagged labels"
        chosen = [k for k in ("targets", "evidence") if k in auto]
        if "rule" in auto and "targets" not in chosen:  # a metrics.json of before the evidence
            chosen.insert(0, "targets")
        which = " and ".join(f"student.{k}=auto" for k in chosen)
        rule += f"; chosen by {which}: the replicas fit {seen}"
    line = (
        f"  test        accuracy {test['accuracy']:.4f} "
        f"(the kept model: student, one network; {rule})"
    )
    ens = test.get("ensemble_accuracy")
    if ens is not None:
        line += f"\n              {ensemble}: {ens:.4f}"
    if kept.get("targets_right") is not None:  # the truth is known: how right its targets were
        line += (
            f"\n              its targets, against the true labels: {kept['targets_right']:.1%} "
            f"right, on the {kept['trained_share']:.1%} of samples it trained on"
        )
    return line


_PHASE_LABELS = {
    "train_steps": "train steps",
    "data_loading": "data",
    "validation": "val",
    "oof": "OOF",
    "confident_learning": "CL",
    "policy_update": "policy",
    "test": "test",
    "refit": "refit",
    "auto_rule": "auto rule",
    "student_evidence": "votes",
    "student": "student",
    "result_files": "files",
    "checkpoint": "checkpoint",
    "other": "other",
}


def timing_line(timing: dict[str, float]) -> str:
    """``metrics.json``'s ``timing`` as one line of shares of the total (phases that ran)."""
    total = timing.get("total") or sum(v for k, v in timing.items() if k != "total")
    shares = [
        f"{label} {timing[k] / total:.0%}" if timing[k] >= 0.005 * total else f"{label} <1%"
        for k, label in _PHASE_LABELS.items()
        if timing.get(k, 0) > 0 and total > 0
    ]
    return f"  time        {total:.1f} s: " + ", ".join(shares)


def summarize(run_dir: str | Path, metrics: dict[str, Any]) -> str:
    """The end-of-run summary of a run folder: :func:`run_summary` with the worst flagged rows
    of its ``label_issues.csv`` and the report's path when there is one."""
    import pandas as pd  # (only when summarising)

    run_dir = Path(run_dir)
    top: list[dict[str, Any]] = []
    issues = run_dir / "label_issues.csv"
    if issues.exists():
        df = pd.read_csv(issues, nrows=5, keep_default_na=False)
        top = [r for r in df.to_dict("records") if str(r.get("flagged")) == "True"]
    text = run_summary(metrics, run_dir, top)
    report = run_dir / "report.html"
    if report.exists():
        text += f"\n  report      {report} (open it in a browser)"
    return text
