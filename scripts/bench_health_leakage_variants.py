"""Variants of the pixel leakage signal on ciFAIR's 139 real CIFAR-10 train/test pairs.

``bench_health_leakage.py`` measures the shipped signal (:func:`dcloop.health.pixel_leakage`:
recall 0.885 at precision >= 0.8 with 20 candidates, 0.892 scored both ways; target 0.9).
This script measures the alternatives tried to close the gap, on the same data and scoring
(one candidate pair per test image, ranked by the score, smallest first), so that the
choice is made from measurements, with the number of choices in the open:

* ``thumb``: no alignment: area-downsampled ``s x s`` thumbnails, zero-mean and unit-norm
  (``gray``: one grey channel, brightness and contrast drop out; ``chan``: per channel, colour
  casts drop out too), cosine distance over all training images, nearest / second ratio;
* ``aligned``: :func:`dcloop.health.pixels.aligned_distance` (standardised central crop,
  best integer shift) at other crop / shift sizes, and with the training image zoomed
  (0.8 or 1.1, the smaller distance of the two scales kept: ciFAIR's copies include
  rescaled shots);
* ``both ways``: a pair scored by the geometric mean of its ratio in both directions when it
  is mutual (each image the other's best match);
* ``label``: the ratio doubled where the two images' labels differ (a copy keeps its label);
* ``x gray8``: the aligned ratio times the square root of the grey-thumbnail ratio of the
  same pair.

Beside the rows: the ceiling of one-pair-per-test-image scoring: how many true pairs have
their training image as the best candidate at all (a pair whose best candidate is another
image can never be counted), against the 126 hits that recall 0.9 needs.

Usage:

    python scripts/bench_health_leakage_variants.py [--root ../shared/data/cifar10-duplicates]
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dcloop.health.knn import knn
from dcloop.health.pixels import aligned_distance, pixel_signature

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_health_leakage import load, scores  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def thumb(x: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    if mode == "gray":
        x = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]
    else:
        x = x - x.mean((-2, -1), keepdim=True)
        x = x / (x.flatten(-2).std(-1)[..., None, None] + 1e-2)
    v = F.interpolate(x, size=(size, size), mode="area").flatten(1)
    return F.normalize(v - v.mean(1, keepdim=True), dim=1)


def zoom(x: torch.Tensor, s: float) -> torch.Tensor:
    theta = torch.tensor([[1 / s, 0, 0], [0, 1 / s, 0]], dtype=torch.float32)
    grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def best(cand: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(d, 1, kind="stable")
    return np.take_along_axis(cand, order, 1), np.take_along_axis(d, order, 1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=str(ROOT.parent / "shared/data/cifar10-duplicates"))
    ap.add_argument("--out", default=str(ROOT / "scripts/results/bench_health_leakage_variants"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    root = Path(args.root)
    train_paths, train = load(root, "train")
    test_paths, test = load(root, "test")
    tr, te = train.float(), test.float()
    ia = {p: i for i, p in enumerate(train_paths)}
    ib = {p: i for i, p in enumerate(test_paths)}
    with open(root / "pairs.csv") as fh:
        truth = {(ib[r["test_path"]], ia[r["train_path"]]) for r in csv.DictReader(fh)}
    label_tr = np.array([Path(p).parent.name for p in train_paths])
    label_te = np.array([Path(p).parent.name for p in test_paths])
    rows: list[dict] = []
    t_start = time.perf_counter()

    def add(name: str, ref: np.ndarray, score: np.ndarray) -> None:
        correct = sum(int(ref[i] == j) for i, j in truth)
        rows.append({"variant": name, **scores(ref, score, truth), "best_is_true": correct})
        print(rows[-1], flush=True)

    for mode in ("gray", "chan"):
        for size in (8, 12, 16):
            d = (1 - thumb(te, size, mode) @ thumb(tr, size, mode).T).clamp_min(0)
            v, i = d.topk(2, dim=1, largest=False)
            ratio = (v[:, 0] / v[:, 1].clamp_min(1e-12)).numpy()
            add(f"thumb {mode} {size}x{size}, ratio", i[:, 0].numpy(), ratio)
    cand = knn(pixel_signature(te), pixel_signature(tr), k=20, metric="euclidean").index
    dist = {}
    for crop, shift in ((24, 3), (24, 4), (28, 2), (16, 6)):
        dist[(crop, shift)] = aligned_distance(te, tr, cand, crop=crop, max_shift=shift).numpy()
        c, d = best(cand.numpy(), dist[(crop, shift)])
        add(f"aligned crop {crop} shift {shift}, ratio", c[:, 0], d[:, 0] / d[:, 1])
    base = dist[(24, 4)]
    for s in (0.8, 1.1):
        z = aligned_distance(te, zoom(tr, s), cand, crop=24, max_shift=4).numpy()
        c, d = best(cand.numpy(), np.minimum(base, z))
        add(f"aligned 24/4, min with zoom {s}, ratio", c[:, 0], d[:, 0] / d[:, 1])
    c, d = best(cand.numpy(), base)
    ref, ratio = c[:, 0], d[:, 0] / d[:, 1]
    back_cand = knn(pixel_signature(tr), pixel_signature(te), k=20, metric="euclidean").index
    back = aligned_distance(tr, te, back_cand, crop=24, max_shift=4).numpy()
    cb, db = best(back_cand.numpy(), back)
    mutual = cb[ref, 0] == np.arange(len(ref))
    both = np.sqrt(ratio * np.where(mutual, db[ref, 0] / db[ref, 1], 1.0))
    add("aligned 24/4, both ways", ref, both)
    other = label_te != label_tr[ref]
    add("aligned 24/4, label (x2 across labels)", ref, np.where(other, 2, 1) * ratio)
    add("aligned 24/4, both ways + label", ref, np.where(other, 2, 1) * both)
    g = (1 - thumb(te, 8, "gray") @ thumb(tr, 8, "gray").T).clamp_min(0).numpy()
    rows_i = np.arange(len(ref))
    pair = g[rows_i, ref].copy()
    g[rows_i, ref] = np.inf
    gray_ratio = pair / np.maximum(g.min(1), 1e-12)
    add("aligned 24/4 x sqrt(gray8 ratio)", ref, ratio * np.sqrt(gray_ratio))
    add(
        "aligned 24/4 x sqrt(gray8 ratio), label",
        ref,
        np.where(other, 2, 1) * ratio * np.sqrt(gray_ratio),
    )

    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])])
    meta = {
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()} CPU, torch {torch.__version__}, 1 thread",
        "pairs": len(truth),
        "hits_needed_for_recall_0.9": int(np.ceil(0.9 * len(truth))),
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    md = [
        "# Pixel leakage signal: variants on ciFAIR's 139 real CIFAR-10 pairs",
        "",
        "```",
        command,
        "```",
        "",
        f"- Date: {meta['date']}; {meta['machine']}; {meta['seconds']} s in all.",
        f"- {len(train_paths)} train and {len(test_paths)} test images, {len(truth)} true "
        "pairs; one candidate pair per test image, ranked by the score (smallest first). "
        f"Recall 0.9 needs {meta['hits_needed_for_recall_0.9']} hits.",
        "- `best is true`: true pairs whose training image is the test image's best match "
        "under the variant (the most that one-pair-per-image scoring can count).",
        "",
        "| variant | average precision | recall at precision >= 0.8 | best is true |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        md.append(
            f"| {r['variant']} | {r['average_precision']:.3f} | {r['recall_at_p0.8']:.3f} | "
            f"{r['best_is_true']} |"
        )
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
