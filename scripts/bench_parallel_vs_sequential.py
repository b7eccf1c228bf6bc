"""Time to a full OOF matrix: fold-parallel (one loop, K replicas) vs sequential (K fits).

Digits (1,167 training samples, 8x8), K=5, SmallCNN, E epochs, one OOF pass at the end.
(a) in-memory tensors, no workers; (b) an albumentations augmentation in 2 DataLoader
workers. Fold-parallel loads and augments each batch once for all K replicas;
sequential mode loads and augments (K-1)/K of the data in each of K separate fits.

    .venv/bin/python scripts/bench_parallel_vs_sequential.py --epochs 5 --repeats 2

Writes scripts/results/bench_parallel_vs_sequential.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from functools import partial
from pathlib import Path

import albumentations as A
import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from dcloop.callbacks import OOFCollector
from dcloop.data import EpochShuffleSampler, LabelNoiseDataModule
from dcloop.folds import assign_folds
from dcloop.models import Classifier, FoldEnsemble, SmallCNN
from dcloop.scale.sequential import merge_shards

RESULTS = Path(__file__).parent / "results"
K = 5


class AlbuAugment:
    """albumentations on a float32 ``(C, H, W)`` tensor (picklable for workers)."""

    def __init__(self) -> None:
        self.aug = A.Compose(
            [
                A.Affine(scale=(0.9, 1.1), translate_percent=(-0.1, 0.1), rotate=(-10, 10), p=1.0),
                A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5),
                A.GaussNoise(std_range=(0.01, 0.05), p=0.5),
            ]
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        img = x.permute(1, 2, 0).numpy()
        out = self.aug(image=img)["image"]
        return torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1).float()


def datamodule(augment: bool) -> LabelNoiseDataModule:
    dm = LabelNoiseDataModule(
        "digits",
        noise={"kind": "symmetric", "rate": 0.2},
        seed=0,
        num_workers=2 if augment else 0,
        train_transform=AlbuAugment() if augment else None,
    )
    dm.setup()
    return dm


def trainer(epochs: int, callbacks) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )


def fold_parallel(augment: bool, epochs: int) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    dm = datamodule(augment)
    model = FoldEnsemble(partial(SmallCNN, 1, 10), dm.given_labels, num_folds=K, seed=0)
    oof = OOFCollector(every_n_epochs=epochs)  # one OOF pass, after the last epoch
    trainer(epochs, [oof]).fit(model, datamodule=dm)
    return time.perf_counter() - t0, oof.probs.numpy()


def sequential(augment: bool, epochs: int) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    dm = datamodule(augment)
    n = dm.num_train
    folds = assign_folds(dm.given_labels, K, seed=0)
    train_ds = dm.train_dataloader().dataset  # with the augmentation
    shards = []
    for k in range(K):
        part = Subset(train_ds, np.flatnonzero(folds != k).tolist())
        loader = DataLoader(
            part,
            batch_size=dm.batch_size,
            sampler=EpochShuffleSampler(len(part), seed=k),
            num_workers=dm.num_workers,
            persistent_workers=dm.num_workers > 0,
        )
        held = DataLoader(
            Subset(dm.train_dataset, np.flatnonzero(folds == k).tolist()),
            batch_size=dm.eval_batch_size,
            num_workers=dm.num_workers,
        )
        oof = OOFCollector(
            n, 10, dataloader=held, every_n_epochs=epochs, require_full_coverage=False
        )
        module = Classifier(partial(SmallCNN, 1, 10), 10, seed=k)
        trainer(epochs, [oof]).fit(module, loader)
        shards.append(oof.shard())
    probs = merge_shards(shards, n)
    return time.perf_counter() - t0, probs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    load_before = os.getloadavg()
    rows = []
    for augment in (False, True):
        setting = "(b) albumentations, 2 workers" if augment else "(a) in-memory tensors"
        times: dict[str, list[float]] = {"fold-parallel": [], "sequential": []}
        for _ in range(args.repeats):
            for name, fn in (("fold-parallel", fold_parallel), ("sequential", sequential)):
                t, probs = fn(augment, args.epochs)
                assert probs.shape == (1167, 10) and np.allclose(probs.sum(1), 1, atol=1e-3)
                times[name].append(t)
                print(f"{setting:32s} {name:14s} {t:7.2f} s", file=sys.stderr)
        fp, sq = min(times["fold-parallel"]), min(times["sequential"])
        rows.append(
            {
                "setting": setting,
                "fold_parallel_s": fp,
                "sequential_s": sq,
                "ratio_sequential_over_parallel": sq / fp,
                "all_s": times,
            }
        )
    load_after = os.getloadavg()
    cmd = (
        f".venv/bin/python scripts/bench_parallel_vs_sequential.py --epochs {args.epochs} "
        f"--repeats {args.repeats}"
    )
    out = {
        "command": cmd,
        "epochs": args.epochs,
        "repeats": args.repeats,
        "folds": K,
        "num_train": 1167,
        "torch_threads": 1,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_parallel_vs_sequential.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [
        "# Time to a full OOF matrix: fold-parallel vs sequential",
        "",
        f"Command: `{cmd}`",
        "",
        f"Digits (1,167 training samples, 8x8, 20 % symmetric noise), K={K}, SmallCNN (width 32), "
        f"{args.epochs} epochs, one OOF pass after the last epoch, CPU, `torch.set_num_threads(1)`,"
        f" best of {args.repeats}. Machine: {out['machine']} (shared with other jobs: load "
        f"average {load_before[0]:.2f} before, {load_after[0]:.2f} after). Each time covers "
        "data setup, training and the OOF pass (sequential: K fits and the merge).",
        "",
        "| setting | fold-parallel (s) | sequential, K fits (s) | sequential / parallel |",
        "| --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['setting']} | {r['fold_parallel_s']:.1f} | {r['sequential_s']:.1f} | "
            f"{r['ratio_sequential_over_parallel']:.2f}x |"
        )
    (RESULTS / "bench_parallel_vs_sequential.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
