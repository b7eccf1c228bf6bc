"""Weak groups: does augmenting and oversampling the embedding's underperforming clusters help
a pattern the training set has too few examples of?

Issue 22's "patterns without enough examples" (the roman "I" with stray lines), planted:
scikit-learn's digits where a share ``--rare`` (default 5 %) of every class's training and
validation images, and ``--test-share`` (50 %) of its test images, are turned by 90 degrees
(``torch.rot90``, exact on 8x8). The turned digits are a kind of sample of every class that
the model sees about 6 times per class. Every method is one default dcloop run (the shipped
config: digits CNN, 20 % symmetric noise, K = 5, the kept student), through
:func:`dcloop.train.train`, with only these overrides:

* ``none``: the default (no augmentation);
* ``targeted``: ``augment=targeted`` (weak classes at level 3, oversampled x2);
* ``groups``: ``augment=targeted callbacks.weak_groups.enabled=true`` (the weak groups' samples
  also at level 3 and x2, the augmenter's values);
* ``groups_oversample``: the same, the weak groups' samples drawn x4
  (``callbacks.weak_groups.oversample=4``; the weak classes stay at x2).

Reported per method, mean and sd over seeds: the kept model's test accuracy on all test
images, on the turned ones (the rare pattern) and on the others; of the turned training
images, the share inside the run's final weak groups (``data_issues/underperforming_groups
.csv``), and of the weak groups' samples, the share that is turned. The pattern and the first
three methods were fixed before the first measurement; ``groups_oversample`` was first
``augment.oversample=4`` (which raises the weak classes too) and became the groups' own factor
when ``callbacks.weak_groups.oversample`` was made settable.

Usage::

    OMP_NUM_THREADS=1 python scripts/bench_weak_groups.py --seeds 0 1 2 \\
        --out scripts/results/bench_weak_groups
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import platform
import shlex
import statistics
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from hydra.utils import instantiate

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_real  # noqa: E402  (scripts/ on the path: the shared compose)

from dcloop import load_model  # noqa: E402
from dcloop.data.datasets import IndexedTensorDataset  # noqa: E402
from dcloop.data.sources import Digits  # noqa: E402
from dcloop.train import train  # noqa: E402

METHODS = {
    "none": [],
    "targeted": ["augment=targeted"],
    "groups": ["augment=targeted", "callbacks.weak_groups.enabled=true"],
    "groups_oversample": [
        "augment=targeted",
        "callbacks.weak_groups.enabled=true",
        "callbacks.weak_groups.oversample=4",
    ],
}
MARK = ":rot90"  # appended to a turned image's source


class RarePatternDigits(Digits):
    """Digits with a share of each class turned by 90 degrees: ``rare`` of the training and
    validation rows, ``test_share`` of the test rows (per class, seeded by the run's seed).
    A turned row's source ends in ``:rot90``."""

    name = "digits (rare turned pattern)"

    def __init__(self, image_size=None, rare: float = 0.05, test_share: float = 0.5) -> None:
        super().__init__(image_size=image_size)
        self.rare, self.test_share = float(rare), float(test_share)

    def load(self, *, seed: int, val_frac: float, test_frac: float):
        splits, names = super().load(seed=seed, val_frac=val_frac, test_frac=test_frac)
        g = np.random.default_rng(seed + 7919)
        share = {"train": self.rare, "val": self.rare, "test": self.test_share}
        return {k: _turn(ds, share[k], g) for k, ds in splits.items()}, names


def _turn(ds: IndexedTensorDataset, share: float, g: np.random.Generator) -> IndexedTensorDataset:
    turn = np.zeros(len(ds), dtype=bool)
    for c in np.unique(ds.labels):
        rows = np.flatnonzero(ds.labels == c)
        turn[g.choice(rows, size=int(round(share * len(rows))), replace=False)] = True
    x = ds.x.clone()
    x[torch.from_numpy(turn)] = torch.rot90(x[torch.from_numpy(turn)], k=1, dims=(-2, -1))
    sources = [ds.source(i) + (MARK if turn[i] else "") for i in range(len(ds))]
    return IndexedTensorDataset(
        x, ds.labels, sources=sources, num_classes=ds.num_classes, class_names=ds.class_names
    )


def run_one(method: str, seed: int, args) -> dict:
    run_dir = Path(args.workdir) / f"{method}_{seed}"
    overrides = [
        f"data.source._target_={__name__}.RarePatternDigits",
        f"+data.source.rare={args.rare}",
        f"+data.source.test_share={args.test_share}",
        *METHODS[method],
    ]
    cfg = bench_real.compose(run_dir, seed, overrides)
    t0, c0 = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics = train(cfg)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    # the kept model on the test split, rebuilt from the run's own config
    dm = instantiate(cfg.data)
    dm.setup("test")
    test = dm.test_dataset
    x = torch.stack([test[i][0] for i in range(len(test))])
    y = torch.as_tensor(test.labels)
    turned = torch.tensor([test.source(i).endswith(MARK) for i in range(len(test))])
    pred = load_model(run_dir).predict_proba(x).argmax(1)
    right = pred == y
    # the final weak groups against the turned training rows
    labels = pd.read_csv(run_dir / "labels.csv")
    train_turned = labels["source"].astype(str).str.endswith(MARK).to_numpy()
    groups_csv = run_dir / "data_issues" / "underperforming_groups.csv"
    in_groups = np.zeros(len(train_turned), dtype=bool)
    if groups_csv.exists():
        idx = pd.read_csv(groups_csv)["index"].to_numpy()
        in_groups[idx] = True
    history = (metrics.get("weak_groups") or {}).get("history", [])
    return {
        "method": method,
        "seed": seed,
        "test_acc": float(right.float().mean()),
        "test_acc_turned": float(right[turned].float().mean()),
        "test_acc_upright": float(right[~turned].float().mean()),
        "kept_acc_metrics": metrics["kept"]["test_accuracy"],
        "turned_train": int(train_turned.sum()),
        "turned_in_groups": float(in_groups[train_turned].mean()) if train_turned.any() else None,
        "groups_turned_share": float(train_turned[in_groups].mean()) if in_groups.any() else None,
        "group_samples": int(in_groups.sum()),
        "f1": metrics.get("detection", {}).get("f1"),
        # the callback's own steps (metrics.json weak_groups.history): how often it fired
        "steps": len(history),
        "steps_fired": sum(1 for h in history if h["samples"]),
        "raised_max": max((h["samples"] for h in history), default=0),
        "wall_s": wall,
        "cpu_s": cpu,
    }


def _ms(values: list) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "—"
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{100 * statistics.mean(vals):.1f} ± {100 * sd:.1f}"


def _fired(rs: list[dict]) -> str:
    if not any(r.get("steps") for r in rs):
        return "—"
    return ", ".join(f"{r['steps_fired']}/{r['steps']} (max {r['raised_max']})" for r in rs)


def render(rows: list[dict], args, command: str, wall: float) -> str:
    lines = [
        "# Weak groups: augmenting the embedding's underperforming clusters "
        "(a planted rare pattern)",
        "",
        "```",
        command,
        "```",
        "",
        f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {platform.machine()} CPU, "
        f"torch {torch.__version__}, one process, torch.set_num_threads(1); "
        f"total wall {wall / 60:.1f} min",
        f"- Data: scikit-learn digits, {100 * args.rare:.0f} % of each class's training and "
        f"validation images and {100 * args.test_share:.0f} % of its test images turned by "
        "90 degrees; every method a default dcloop run (20 % symmetric noise, K = 5, the kept "
        "student) with the overrides in the script's doc.",
        "- Test accuracy % of the kept model (mean ± sd over seeds); weak groups: the run's "
        "final `underperforming_groups.csv`.",
        "",
        "| method | n | test acc. | turned (rare pattern) | upright | turned training images "
        "in weak groups | weak-group samples that are turned | loop steps with a weak group "
        "| detection F1 | CPU s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in METHODS:
        rs = [r for r in rows if r["method"] == m]
        if not rs:
            continue
        f1 = [r["f1"] for r in rs if r["f1"] is not None]
        lines.append(
            f"| {m} | {len(rs)} | {_ms([r['test_acc'] for r in rs])} | "
            f"{_ms([r['test_acc_turned'] for r in rs])} | "
            f"{_ms([r['test_acc_upright'] for r in rs])} | "
            f"{_ms([r['turned_in_groups'] for r in rs])} | "
            f"{_ms([r['groups_turned_share'] for r in rs])} | "
            f"{_fired(rs)} | {statistics.mean(f1):.3f} | "
            f"{statistics.mean(r['cpu_s'] for r in rs):.0f} |"
        )
    lines += [
        "",
        "Per run:",
        "",
        "| method | seed | test acc. | turned | upright | turned in groups | group samples | "
        "turned share of groups |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:

        def pct(v):
            return "—" if v is None else f"{100 * v:.1f}"

        lines.append(
            f"| {r['method']} | {r['seed']} | {pct(r['test_acc'])} | {pct(r['test_acc_turned'])} "
            f"| {pct(r['test_acc_upright'])} | {pct(r['turned_in_groups'])} | "
            f"{r['group_samples']} | {pct(r['groups_turned_share'])} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--rare", type=float, default=0.05)
    p.add_argument("--test-share", type=float, default=0.5)
    p.add_argument("--workdir", default="/tmp/bench_weak_groups")
    p.add_argument("--out", default="scripts/results/bench_weak_groups")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    logging.getLogger("dcloop").setLevel(logging.WARNING)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    command = "python " + shlex.join(["scripts/bench_weak_groups.py", *(argv or sys.argv[1:])])
    t0 = time.perf_counter()
    rows = []
    for seed in args.seeds:
        for m in args.methods:
            rows.append(run_one(m, seed, args))
            r = rows[-1]
            print(
                f"{m} seed {seed}: test {r['test_acc']:.3f} turned {r['test_acc_turned']:.3f} "
                f"in groups {r['turned_in_groups']} ({r['cpu_s']:.0f} CPU s)",
                flush=True,
            )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"command": command, "rows": rows}, indent=1))
    out.with_suffix(".md").write_text(render(rows, args, command, time.perf_counter() - t0))
    print(f"wrote {out}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
