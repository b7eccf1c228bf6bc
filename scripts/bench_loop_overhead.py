"""Loop overhead: the OOF pass's share of an epoch, every replica (before) vs held-out only (after).

CIFAR-shaped in-memory data (seeded random uint8 images, 3x32x32, 10 classes, served by
dcloop's ``IndexedTensorDataset`` like the cifar10 source), ``FoldEnsemble`` of SmallCNN
(width 32, vmap), train batch 128, OOF batch 512 (the cifar10 config's). Each (N, K) runs in
its own process with ``torch.set_num_threads(1)``; ``--jobs`` processes run at once.

Per (N, K): one training epoch with the new OOF pass in the loop (``OOFCollector``, default
``mode="held_out"``) and ``dcloop.timing.LoopTiming``, then on the same trained model the
old pass (``mode="all"``: every replica on every batch, one output kept) and the new one
again, each timed through ``OOFCollector.collect``; the two OOF matrices are compared.
``--train-fraction f`` trains on the first fraction f of the epoch's batches and scales
the training time by 1/f (marked in the table); the OOF passes always cover all N rows.

Usage:

    python scripts/bench_loop_overhead.py [--n 6000 24000] [--folds 5 10] [--configs N:K ...]
        [--jobs 2] [--train-fraction 1.0] [--out scripts/results/bench_loop_overhead]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

TRAIN_BATCH, OOF_BATCH, WIDTH, C = 128, 512, 32, 10


def plain(n: int, train_fraction: float, seed: int = 0) -> dict:
    """One plain SmallCNN's training epoch on the same data (the cost of not cleaning)."""
    import torch

    torch.set_num_threads(1)
    import lightning as L

    from dcloop.models import Classifier, SmallCNN
    from dcloop.timing import LoopTiming, phase_times

    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        callbacks=[LoopTiming()],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_train_batches=train_fraction,
        num_sanity_val_steps=0,
    )
    trainer.fit(Classifier(partial(SmallCNN, 3, C, width=WIDTH), C, seed=seed), _train(n, seed))
    s = phase_times(trainer).seconds
    return {"n": n, "plain_epoch_s": (s["train_steps"] + s["data_loading"]) / train_fraction}


def _data(n: int, seed: int):
    import numpy as np
    import torch

    from dcloop.data.datasets import IndexedTensorDataset

    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return IndexedTensorDataset(x, np.arange(n) % C, num_classes=C)


def _train(n: int, seed: int):
    from torch.utils.data import DataLoader

    from dcloop.data.sampling import EpochShuffleSampler

    return DataLoader(
        _data(n, seed), batch_size=TRAIN_BATCH, sampler=EpochShuffleSampler(n, seed=seed)
    )


def one(n: int, k: int, train_fraction: float, seed: int = 0) -> dict:
    """One (N, K) measurement in this process (1 thread)."""
    import torch

    torch.set_num_threads(1)
    import lightning as L
    from torch.utils.data import DataLoader

    from dcloop.callbacks import OOFCollector
    from dcloop.data.fold_batches import FoldBatchSampler
    from dcloop.models import FoldEnsemble, SmallCNN
    from dcloop.timing import LoopTiming, phase_times

    train = _train(n, seed)
    ds = train.dataset
    labels = ds.labels
    oof_loader = DataLoader(ds, batch_size=OOF_BATCH)
    model = FoldEnsemble(partial(SmallCNN, 3, C, width=WIDTH), labels, num_folds=k, seed=seed)
    new = OOFCollector(dataloader=oof_loader)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        callbacks=[new, LoopTiming()],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_train_batches=train_fraction,
        num_sanity_val_steps=0,
    )
    start = time.perf_counter()
    trainer.fit(model, train)
    fit_s = time.perf_counter() - start
    s = phase_times(trainer).seconds
    train_s = (s["train_steps"] + s["data_loading"]) / train_fraction
    in_loop_new = s["oof"]

    def timed_pass(mode: str) -> tuple[float, torch.Tensor]:
        oof = OOFCollector(dataloader=oof_loader, mode=mode)
        oof.setup(trainer, model, "fit")
        t = time.perf_counter()
        oof.collect(trainer, model)
        return time.perf_counter() - t, oof.probs

    old_s, old_probs = timed_pass("all")
    new_s, new_probs = timed_pass("held_out")
    folds = model.samples.folds.numpy()
    sampler = FoldBatchSampler(folds, OOF_BATCH)
    return {
        "n": n,
        "folds": k,
        "train_fraction": train_fraction,
        "train_epoch_s": train_s,
        "train_steps_s": s["train_steps"] / train_fraction,
        "data_loading_s": s["data_loading"] / train_fraction,
        "oof_old_s": old_s,
        "oof_new_s": new_s,
        "oof_new_in_loop_s": in_loop_new,
        "share_old": old_s / (train_s + old_s),
        "share_new": new_s / (train_s + new_s),
        "speedup": old_s / new_s,
        "oof_max_abs_diff": float((old_probs - new_probs).abs().max()),
        "vectorized": model.vectorized,
        "oof_batches_old": -(-n // OOF_BATCH),
        "oof_batches_new": len(sampler),
        "oof_rows_new": len(sampler) * sampler.batch_rows,
        "fit_s": fit_s,
        "threads": torch.get_num_threads(),
    }


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        return names[0] if names else platform.processor()
    except OSError:
        return platform.processor()


def markdown(rows: list[dict], meta: dict) -> str:
    out = [
        "# Loop overhead: OOF pass share of an epoch, before vs after",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"CIFAR-shaped random uint8 images (3x32x32, {C} classes, in memory), FoldEnsemble of "
        f"SmallCNN width {WIDTH} (vmap), train batch {TRAIN_BATCH}, OOF batch {OOF_BATCH}, one "
        f"epoch. CPU ({meta['cpu']}, {meta['cpus']} cores), one process per (N, K) with "
        f"`torch.set_num_threads(1)`, {meta['jobs']} at once; torch {meta['torch']}. "
        f"Load average before {meta['load_before']}, after {meta['load_after']}. "
        f"Wall {meta['wall_s']:.0f} s.",
        "",
        'Epoch = training (steps + data loading) + OOF pass. *before* = `mode="all"` (every '
        'replica on every batch, one output kept); *after* = `mode="held_out"` (fold-grouped '
        "batches, replica k alone).",
        "",
        "| N | K | train epoch (s) | OOF before (s) | OOF after (s) | speed-up | "
        "OOF share before | OOF share after | max abs diff |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        scaled = "" if r["train_fraction"] == 1 else f" (x1/{r['train_fraction']:g})"
        out.append(
            f"| {r['n']} | {r['folds']} | {r['train_epoch_s']:.1f}{scaled} | "
            f"{r['oof_old_s']:.1f} | {r['oof_new_s']:.1f} | {r['speedup']:.1f}x | "
            f"{r['share_old']:.1%} | {r['share_new']:.1%} | {r['oof_max_abs_diff']:.1e} |"
        )
    out += [
        "",
        "OOF after, as timed inside the training loop (`metrics.json` `timing.oof`): "
        + ", ".join(f"N={r['n']} K={r['folds']}: {r['oof_new_in_loop_s']:.1f} s" for r in rows)
        + ". Epoch time (training + OOF pass) relative to one plain SmallCNN's training epoch "
        "on the same data (the cost of cleaning vs not cleaning), before -> after: "
        + ", ".join(
            f"N={r['n']} K={r['folds']}: {r['cost_vs_plain_old']:.1f}x -> "
            f"{r['cost_vs_plain_new']:.1f}x (plain {r['plain_epoch_s']:.1f} s)"
            for r in rows
        )
        + ". Rows run by the after pass (incl. fold padding): "
        + ", ".join(f"{r['oof_rows_new']} for N={r['n']} K={r['folds']}" for r in rows)
        + ".",
    ]
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs="+", default=[6000, 24000])
    p.add_argument("--folds", type=int, nargs="+", default=[5, 10])
    p.add_argument("--configs", nargs="+", metavar="N:K", help="instead of --n x --folds")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--train-fraction", type=float, default=1.0)
    p.add_argument("--out", default="scripts/results/bench_loop_overhead")
    args = p.parse_args()
    if not 0 < args.train_fraction <= 1:
        raise SystemExit(f"--train-fraction must be in (0, 1]; got {args.train_fraction}")
    import torch

    meta = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "cpu": cpu_name(),
        "cpus": os.cpu_count(),
        "jobs": args.jobs,
        "torch": torch.__version__,
        "load_before": " ".join(f"{v:.2f}" for v in os.getloadavg()),
    }
    configs = [(n, k) for n in args.n for k in args.folds]
    if args.configs:
        configs = [tuple(int(v) for v in c.split(":")) for c in args.configs]
    configs.sort(key=lambda c: -c[0] * c[1])  # longest first
    start = time.perf_counter()
    spawn = multiprocessing.get_context("spawn")  # fresh interpreters, 1 thread each
    with ProcessPoolExecutor(args.jobs, mp_context=spawn) as pool:
        futures = [pool.submit(one, n, k, args.train_fraction) for n, k in configs]
        sizes = sorted({n for n, _ in configs})
        plains = [pool.submit(plain, n, args.train_fraction) for n in sizes]
        rows = [f.result() for f in futures]
        base = {r["n"]: r["plain_epoch_s"] for r in (f.result() for f in plains)}
    for r in rows:
        r["plain_epoch_s"] = base[r["n"]]
        r["cost_vs_plain_old"] = (r["train_epoch_s"] + r["oof_old_s"]) / base[r["n"]]
        r["cost_vs_plain_new"] = (r["train_epoch_s"] + r["oof_new_s"]) / base[r["n"]]
    meta["wall_s"] = time.perf_counter() - start
    meta["load_after"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    rows.sort(key=lambda r: (r["n"], r["folds"]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    text = markdown(rows, meta)
    out.with_suffix(".md").write_text(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
