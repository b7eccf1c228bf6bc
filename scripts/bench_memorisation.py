"""Does one network of a run's recipe fit the wrong labels? (the evidence behind
``student.targets=auto``)

For each finished run folder (``config.yaml``, ``sample_table.pt``, ``labels.csv`` with the
true labels, ``oof_probs_smoothed.npy``), train one network with the run's recipe and seed on
the given labels (``given``) and one with forward correction (``forward``), then predict the
training set and report, among the samples whose given label is wrong: the share predicted as
the given (wrong) label, and as the true label; and the training accuracy on the rest. One
process, one thread.

Usage:

    python scripts/bench_memorisation.py --runs RUN [RUN ...] --out scripts/results/NAME
"""

from __future__ import annotations

import argparse
import csv
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path


def one_run(run: Path) -> list[dict]:
    import numpy as np
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_student_saved import SavedRun

    from dcloop.student import StudentPolicy

    saved = SavedRun(run)
    with open(run / "labels.csv", newline="") as f:
        true = np.array([int(r["true_label"]) for r in csv.DictReader(f)])
    given = saved.table["labels"].numpy()
    noisy = given != true
    rows = []
    for rule in ("given", "forward"):
        t0 = time.process_time()
        model, _ = saved.student(StudentPolicy(targets=rule))
        model.eval()
        pred = np.empty(len(given), dtype=np.int64)
        with torch.no_grad():
            for x, _, index in saved.dm.oof_dataloader():
                pred[index.numpy()] = model(x).argmax(-1).numpy()
        rows.append(
            {
                "run": str(run),
                "rule": rule,
                "noisy": int(noisy.sum()),
                "fits_wrong": float((pred[noisy] == given[noisy]).mean()),
                "predicts_true": float((pred[noisy] == true[noisy]).mean()),
                "clean_train_acc": float((pred[~noisy] == given[~noisy]).mean()),
                "cpu_s": time.process_time() - t0,
            }
        )
    return rows


def main(argv=None) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_student_saved import write_result

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", nargs="+", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    rows = [r for run in args.runs for r in one_run(run)]
    command = "python scripts/bench_memorisation.py " + " ".join(sys.argv[1:])
    lines = [
        "# Does one network of the recipe fit the wrong labels?",
        "",
        "```",
        command,
        "```",
        "",
        f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {platform.machine()} CPU, "
        f"one process, one thread; {(time.perf_counter() - t0) / 60:.1f} min.",
        "- Each network: the run's own recipe and seed, from scratch, on all training samples; "
        "then its prediction on the training set (no augmentation).",
        "",
        "| run | loss | wrong labels | predicted as the wrong label | as the true label "
        "| training accuracy, right labels |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['rule']} | {r['noisy']} | {r['fits_wrong']:.3f} | "
            f"{r['predicts_true']:.3f} | {r['clean_train_acc']:.3f} |"
        )
    write_result(args.out, lines, command, rows)


if __name__ == "__main__":
    main()
