"""Corrupted targets in (X, Y) pairs: how well do the pair outlier scores find them?

Two tasks that are not classification, each with a share of corrupted targets:

* ``regression``: X in R^8 (Gaussian), Y = tanh(X W1) W2 in R^4 plus small noise; the
  corrupted rows get the Y of another random row (a wrong pairing: X and Y are each
  ordinary, only the pair is not) or a Y pushed off by 3 standard deviations ("garbled").
* ``digits-transcription``: X = the 8x8 handwritten digit (scikit-learn's embedded digits,
  PCA to 16 dims), Y = an embedding of its "transcript" (the digit's name through a fixed
  random 8-dim text embedding plus the ink density); the corrupted rows get the transcript
  of another digit.

Scores: ``knn`` (cleanlab's OutOfDistribution on the standardised concatenation),
``iforest`` (IsolationForest on the same), ``residual`` (kNN regression residual of Y given
X, an extra). Each flags as many pairs as there are corrupted ones (precision = recall).
Usage:

    python scripts/demo_pairs.py [--rates 0.02 0.05 0.1] [--seeds 0 1 2] [--out scripts/results]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dcloop.beyond.pairs import METHODS, precision_recall, score_pairs
from dcloop.results import write_json


def regression(n: int, rate: float, seed: int, kind: str):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8))
    y = np.tanh(x @ rng.normal(size=(8, 6)) / np.sqrt(8)) @ rng.normal(size=(6, 4))
    y += 0.05 * y.std() * rng.normal(size=y.shape)
    bad = rng.choice(n, size=int(round(rate * n)), replace=False)
    if kind == "swap":
        y[bad] = y[rng.choice(np.setdiff1d(np.arange(n), bad), size=len(bad))]
    else:
        y[bad] += 3.0 * y.std(0) * rng.choice([-1, 1], size=(len(bad), y.shape[1]))
    truth = np.zeros(n, bool)
    truth[bad] = True
    return x, y, truth


def digits_transcription(rate: float, seed: int):
    from sklearn.datasets import load_digits
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(seed)
    d = load_digits()
    x = PCA(16, random_state=0).fit_transform(d.data)
    words = np.random.default_rng(123).normal(size=(10, 8))  # fixed "text embedding" per name
    label = d.target.copy()
    n = len(label)
    bad = rng.choice(n, size=int(round(rate * n)), replace=False)
    label[bad] = (label[bad] + rng.integers(1, 10, len(bad))) % 10
    ink = d.data.sum(1, keepdims=True) / 1000.0
    y = np.concatenate([words[label], ink], axis=1)
    truth = np.zeros(n, bool)
    truth[bad] = True
    return x, y, truth


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--rates", type=float, nargs="+", default=[0.02, 0.05, 0.1])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--out", default="scripts/results")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    t0 = time.perf_counter()
    for task in ("regression-swap", "regression-garbled", "digits-transcription"):
        for rate in args.rates:
            for seed in args.seeds:
                if task == "digits-transcription":
                    x, y, truth = digits_transcription(rate, seed)
                else:
                    x, y, truth = regression(args.n, rate, seed, task.split("-")[1])
                pr = precision_recall(score_pairs(x, y, k=args.k, seed=seed), truth)
                for m in METHODS:
                    rows.append(
                        {
                            "task": task,
                            "rate": rate,
                            "seed": seed,
                            "method": m,
                            "n": len(x),
                            **pr[m],
                        }
                    )
    df = pd.DataFrame(rows)
    wall = time.perf_counter() - t0
    agg = (
        df.groupby(["task", "rate", "method"], sort=False)
        .agg(
            n=("n", "first"),
            precision=("precision", "mean"),
            p_std=("precision", "std"),
            auroc=("auroc", "mean"),
        )
        .reset_index()
    )
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    out = Path(args.out)
    write_json(
        {"command": command, "args": vars(args), "runs": rows, "wall_s": wall},
        out / "demo_pairs.json",
    )
    lines = [
        "# demo_pairs: corrupted targets in (X, Y) pairs",
        "",
        f"Command: `{command}`",
        "",
        "Each method flags as many pairs as are corrupted, so precision = recall. Mean (and "
        f"std) over seeds {args.seeds}; k={args.k}; {wall:.0f} s in all on CPU, 1 torch thread. "
        "Tasks are described in the script's docstring; `knn` (cleanlab OutOfDistribution) and "
        "`iforest` (IsolationForest) score the standardised concatenation [X, Y]; `residual` is "
        "the kNN-regression residual of Y given X.",
        "",
        "| task | corrupted | n | method | precision = recall | std | AUROC |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in agg.itertuples():
        lines.append(
            f"| {r.task} | {r.rate:.0%} | {r.n} | {r.method} | {r.precision:.3f} | "
            f"{r.p_std:.3f} | {r.auroc:.3f} |"
        )
    lines += [
        "",
        "Mean precision over the corruption rates, per task (computed from the rows above):",
        "",
    ]
    means = agg.groupby(["task", "method"], sort=False)["precision"].mean()
    for task in agg["task"].unique():
        per = means[task].sort_values(ascending=False)
        lines.append(f"- {task}: " + ", ".join(f"{m} {v:.3f}" for m, v in per.items()))
    (out / "demo_pairs.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
