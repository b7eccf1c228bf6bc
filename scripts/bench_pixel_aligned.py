"""Time of the pixel signal's aligned comparison: every shifted window (the code before) vs
one grouped correlation with box-filter moments (:func:`dcloop.health.pixels.aligned_distance`).

Data: the planted CIFAR subset of :mod:`bench_health_planted` (5,100 images 32x32, seed 0),
near-duplicates inside the set as a run computes them (``pixel_leakage(images)``: 10
candidates per image by :func:`~dcloop.health.pixels.shifted_candidates`, central 26x26
window, shifts up to 3 px). One CPU thread. Reports the seconds of each, the largest
difference of the distances, and whether the chosen pair and the flags at ratio < 0.5
(``pixel_duplicate_ratio``) are the same.

Usage:

    python scripts/bench_pixel_aligned.py [--images 5100] [--repeats 2] [--out ...]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_health_planted as bhp  # noqa: E402

from dcloop.health.pixels import (  # noqa: E402
    _standardise,
    _unit_range,
    aligned_distance,
    shifted_candidates,
)


def every_window(q, r, candidates, *, crop: int, max_shift: int) -> torch.Tensor:
    """The comparison before: each shift's window standardised and compared in turn."""
    q, r = _unit_range(q, r)
    h, w = q.shape[-2:]
    y0, x0 = (h - crop) // 2, (w - crop) // 2
    best = torch.full(candidates.shape, float("inf"))
    step = max(1, (1 << 22) // max(candidates.shape[1] * q[0].numel(), 1))
    for s in range(0, q.shape[0], step):
        qc = _standardise(q[s : s + step, :, y0 : y0 + crop, x0 : x0 + crop])[:, None]
        rc = r[candidates[s : s + step]]
        for dy in range(-max_shift, max_shift + 1):
            for dx in range(-max_shift, max_shift + 1):
                win = rc[..., y0 + dy : y0 + dy + crop, x0 + dx : x0 + dx + crop]
                d = ((qc - _standardise(win)) ** 2).flatten(2).mean(-1)
                best[s : s + step] = torch.minimum(best[s : s + step], d)
    return best


def pick(dist: torch.Tensor, cand: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    d, order = dist.sort(dim=1)
    return cand.gather(1, order)[:, 0], d[:, 0] / d[:, 1].clamp_min(1e-12)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=5100)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "results" / "bench_pixel_aligned"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t, *_ = bhp.image_data(np.random.default_rng(0))
    t = t[: args.images]
    crop, shift = 26, 3  # a run's values for 32 px images
    t0 = time.perf_counter()
    cand = shifted_candidates(t, None, k=10, max_shift=shift)
    t_cand = time.perf_counter() - t0
    times = {"every window (before)": [], "one correlation (now)": []}
    for _ in range(args.repeats):  # interleaved
        t0 = time.perf_counter()
        old = every_window(t, t, cand, crop=crop, max_shift=shift)
        times["every window (before)"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        new = aligned_distance(t, t, cand, crop=crop, max_shift=shift)
        times["one correlation (now)"].append(time.perf_counter() - t0)
    ref_old, ratio_old = pick(old, cand)
    ref_new, ratio_new = pick(new, cand)
    flags_old, flags_new = ratio_old < 0.5, ratio_new < 0.5
    result = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()} CPU, 1 thread, torch {torch.__version__}",
        "images": int(t.shape[0]),
        "candidates_s": round(t_cand, 2),
        "seconds": {k: [round(v, 2) for v in vs] for k, vs in times.items()},
        "max_abs_difference": float((old - new).abs().max()),
        "same_pair": float((ref_old == ref_new).float().mean()),
        "same_flags": bool(torch.equal(flags_old, flags_new)),
        "flags": int(flags_new.sum()),
    }
    best = {k: min(v) for k, v in times.items()}
    md = [
        "# The pixel signal's aligned comparison: before and now",
        "",
        "```",
        result["command"],
        "```",
        "",
        f"- Date: {result['date']}; {result['machine']}",
        f"- {result['images']} images (the planted CIFAR subset), 10 candidates each "
        f"({result['candidates_s']} s to find them, unchanged), 26x26 window, shifts up to 3 px; "
        f"best of {args.repeats} interleaved repeats.",
        "",
        "| comparison | seconds (best) | all repeats |",
        "|---|---:|---|",
        *(f"| {k} | {best[k]:.2f} | {', '.join(f'{v:.2f}' for v in times[k])} |" for k in times),
        "",
        f"- Speed-up: {best['every window (before)'] / best['one correlation (now)']:.1f}x.",
        f"- Largest difference of the distances: {result['max_abs_difference']:.2e}; the same "
        f"best pair for {result['same_pair'] * 100:.2f} % of the images; flags at ratio < 0.5 "
        f"the same: {result['same_flags']} ({result['flags']} images).",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
