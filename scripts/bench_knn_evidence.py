"""How often each evidence names the true label, post hoc on finished default runs: the
replicas' held-out softmax (``oof_probs_smoothed.npy``) against the vote of each sample's 10
nearest training samples in the replicas' mean embedding (``data_issues/features_train.npy``,
:func:`dcloop.student.neighbour_votes`, what ``student.evidence=knn`` relabels from).

For each run folder: the share of all training samples, and of the run's flagged ones, whose
evidence's top class is the true label; and the replicas' fit of the flagged labels they
train on where the run saved ``in_fold_probs.npy`` (what ``student.evidence=auto`` reads).
No training.

Usage: ``python scripts/bench_knn_evidence.py --runs RUN [RUN ...] --out
scripts/results/bench_knn_evidence``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_health_planted as bhp  # noqa: E402

from dcloop.student import flagged_fit, neighbour_votes  # noqa: E402


def one(run: Path) -> dict:
    table = torch.load(run / "sample_table.pt")
    labels = table["labels"].long()
    true = pd.read_csv(run / "labels.csv")["true_label"].to_numpy()
    oof = torch.from_numpy(np.load(run / "oof_probs_smoothed.npy")).float()
    feats = torch.from_numpy(np.load(run / "data_issues" / "features_train.npy")).float()
    votes = neighbour_votes(feats, labels, oof.shape[1])
    flagged = table["flagged"].bool().numpy()
    row = {"run": "/".join(run.parts[-3:]), "flagged": int(flagged.sum())}
    for name, ev in (("oof", oof), ("knn", votes)):
        right = ev.argmax(1).numpy() == true
        row[f"{name}_right"] = round(float(right.mean()), 3)
        row[f"{name}_right_flagged"] = round(float(right[flagged].mean()), 3)
    fit = run / "in_fold_probs.npy"
    row["flagged_fit"] = None
    if fit.exists():
        f = flagged_fit(
            torch.from_numpy(np.load(fit)).float(), labels, table["flagged"], table["weights"]
        )
        row["flagged_fit"] = None if f is None else round(f, 3)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", nargs="+", required=True)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    rows = [one(Path(r)) for r in args.runs]
    meta = bhp.page_meta(argv, t0)
    md = [
        "# Which evidence names the true label: held-out softmax vs the neighbours' vote",
        "",
        "```",
        meta["command"],
        "```",
        "",
        f"- Date: {meta['date']}; {meta['machine']}; wall {meta['wall_s']} s. No training.",
        "",
        "| run | flagged | oof right (all / flagged) | knn right (all / flagged) | "
        "replicas' fit of "
        "the flagged labels |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        fit = "-" if r["flagged_fit"] is None else f"{r['flagged_fit']:.3f}"
        md.append(
            f"| {r['run']} | {r['flagged']} | {r['oof_right']:.3f} / {r['oof_right_flagged']:.3f}"
            f" | {r['knn_right']:.3f} / {r['knn_right_flagged']:.3f} | {fit} |"
        )
    bhp.write_page(args.out, "\n".join(md) + "\n", {**meta, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
