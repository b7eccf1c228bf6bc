"""Synthetic COCO -> crops -> in-loop confident learning -> flagged annotations vs the truth.

Writes a synthetic COCO set (coloured circles, squares, triangles and crosses on noisy
backgrounds; ``--noise-rate`` of the annotations get a wrong category), runs the ordinary
dcloop training (``data=coco noise=none``: the wrong categories are in the file, dcloop is
not told which), and compares the flagged annotations of the training split
(``label_issues_coco.json``) with the corrupted ones (``truth.json``). Usage:

    python scripts/demo_coco.py [--images 300] [--epochs 20] [--seeds 0 1 2] [--out scripts/results]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

import dcloop
from dcloop.beyond.detection import annotation_id, make_synthetic_coco
from dcloop.results import write_json
from dcloop.train import train

CONF = str(Path(dcloop.__file__).parent / "conf")


def md_table(df: pd.DataFrame) -> str:
    """A markdown table (floats to 3 decimals) without the optional tabulate package."""

    def cell(v) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    head = "| " + " | ".join(df.columns) + " |"
    rule = "| " + " | ".join("---" for _ in df.columns) + " |"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def one_run(
    images: int,
    noise_rate: float,
    epochs: int,
    image_size: int,
    seed: int,
    work: Path,
    hue_jitter: float = 0.1,
) -> dict:
    info = make_synthetic_coco(
        work / "data", num_images=images, noise_rate=noise_rate, seed=seed, hue_jitter=hue_jitter
    )
    run_dir = work / "run"
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                f"output_dir={run_dir}",
                "logger=none",
                "checkpoint=false",
                "trainer.enable_progress_bar=false",
                "data=coco",
                f"data.source.root={info['root']}",
                f"data.source.annotations={info['annotations']}",
                "noise=none",
                f"trainer.max_epochs={epochs}",
                f"seed={seed}",
                f"data.source.image_size={image_size}",
            ],
        )
    t = time.perf_counter()
    metrics = train(cfg)
    wall = time.perf_counter() - t
    issues = pd.read_csv(run_dir / "label_issues.csv")
    train_ids = np.array([annotation_id(s) for s in issues["source"]])
    bad = set(info["corrupted"])
    is_bad = np.array([a in bad for a in train_ids])
    flagged_json = json.loads((run_dir / "label_issues_coco.json").read_text())["annotations"]
    flagged = {a["id"] for a in flagged_json}
    hits = len(flagged & (bad & set(train_ids)))
    n_bad = int(is_bad.sum())
    truth = json.loads(Path(info["truth"]).read_text())["true_category"]
    right_fix = sum(
        1
        for a in flagged_json
        if a["id"] in bad and a["suggested_category_id"] == truth[str(a["id"])]
    )
    return {
        "seed": seed,
        "annotations": info["num_annotations"],
        "train_annotations": len(train_ids),
        "train_corrupted": n_bad,
        "flagged": len(flagged),
        "precision": hits / max(len(flagged), 1),
        "recall": hits / max(n_bad, 1),
        "suggested_right": right_fix / max(hits, 1),
        "test_accuracy": metrics["test"]["accuracy"],
        "pngs": len(list((run_dir / "flagged_boxes").glob("*.png"))),
        "wall_s": wall,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=400)
    p.add_argument("--noise-rate", type=float, default=0.15)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--image-size", type=int, default=24)
    p.add_argument("--hue-jitter", type=float, default=0.1)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default="scripts/results")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(
                one_run(
                    args.images,
                    args.noise_rate,
                    args.epochs,
                    args.image_size,
                    seed,
                    Path(tmp),
                    args.hue_jitter,
                )
            )
        print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    out = Path(args.out)
    write_json({"command": command, "args": vars(args), "runs": rows}, out / "demo_coco.json")
    lines = [
        "# demo_coco: flagged COCO annotations vs injected wrong categories",
        "",
        f"Command: `{command}`",
        "",
        f"Synthetic COCO, {args.images} images of 96x96 px with 1-4 shapes each (4 categories: "
        "circle, square, triangle, cross; hue = the category's plus Gaussian jitter "
        f"{args.hue_jitter} of the hue circle, so colour is a partial cue; noisy backgrounds); "
        f"{args.noise_rate:.0%} of the annotations get a wrong category in annotations.json. "
        f"`dcloop data=coco noise=none` (crops of {args.image_size} px with 10 % context, "
        "SmallCNN, K=5, "
        f"{args.epochs} epochs, prune, defaults otherwise), "
        f"{torch.get_num_threads()} torch thread(s) on CPU. Precision and recall are over the "
        "training split's annotations (images, with all their crops, are split about 65/15/20 "
        "into train/val/test (`data.source.split_by=image`), and only "
        "train is scored); `suggested right` is the share of correctly flagged annotations whose "
        "suggested category is the true one. `test_accuracy` is against the test split's given "
        f"categories, which hold the same {args.noise_rate:.0%} of wrong ones.",
        "",
        md_table(df),
        "",
        f"Mean over {len(df)} seed(s): precision {df['precision'].mean():.3f}, "
        f"recall {df['recall'].mean():.3f}, test accuracy {df['test_accuracy'].mean():.3f}.",
    ]
    (out / "demo_coco.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
