"""Targeted augmentation benchmark: digits with class-dependent noise and imbalance.

Three classes (``--minority``) keep only ``--keep-frac`` of their training samples, and
class-dependent label noise is injected (30 % of the minority classes' labels, 15 % of the
others', flipped to a random majority class), so those classes become weak. Each
method trains the same fold-parallel SmallCNN (K=5, prune after the warm-up), on the same
split, noise and order per seed:

* ``none``: no augmentation;
* ``uniform``: every class at level 1 of 3 (all seven albumentations ops, p=0.5);
* ``targeted``: every class at level 1; the weak classes (``WeakClasses``, bottom-3 rule
  after each confident-learning step) at level 3 and oversampled ``--oversample`` times.

Reported: test accuracy (mean softmax of the K replicas) and the test recall of the three
weakest classes, which are fixed by design (the subsampled ones), not picked after the fact.
The script also records which classes the rule chose.

Example::

    python scripts/bench_augment.py                       # 3 seeds, writes scripts/results/
    python scripts/bench_augment.py --seeds 0 --epochs 3 --out /tmp/bench_aug_smoke
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import json
import logging
import platform
import shlex
import sys
import time
import warnings
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import torch

from dcloop.augment import Augmenter
from dcloop.callbacks import ConfidentLearning, OOFCollector, WeakClasses
from dcloop.data import LabelNoiseDataModule, NoiseResult, empirical_noise_matrix
from dcloop.models import FoldEnsemble, SmallCNN

AUGMENT = {
    "none": None,
    "uniform": {"kind": "uniform", "levels": 3, "level": 1},
    "targeted": {"kind": "targeted", "levels": 3, "level": 1, "weak_level": 3},
}


class ImbalancedDigits(LabelNoiseDataModule):
    """Digits whose ``minority`` classes keep ``keep_frac`` of their training rows, with
    class-dependent label noise: a training label of class k is wrong with probability
    ``minority_noise`` (minority classes) or ``majority_noise`` (the others), and a wrong
    label is a uniformly drawn *majority* class other than k (so the few true samples of a
    minority class are not drowned by labels flipped into it)."""

    def __init__(
        self, minority, keep_frac: float, minority_noise: float, majority_noise: float, **kwargs
    ) -> None:
        super().__init__("digits", noise=None, **kwargs)
        self.minority, self.keep_frac = tuple(minority), float(keep_frac)
        self.rates = np.where(np.isin(np.arange(10), self.minority), minority_noise, majority_noise)

    def setup(self, stage=None) -> None:
        if self.is_setup:
            return
        super().setup(stage)
        true = self.noise.true_labels
        rng = np.random.default_rng(2000 + self.seed)
        flip = rng.random(len(true)) < self.rates[true]
        majority = np.array([k for k in range(10) if k not in self.minority])
        given = true.copy()
        for i in np.flatnonzero(flip):
            given[i] = rng.choice(majority[majority != true[i]])
        matrix = empirical_noise_matrix(given, true, 10)
        # kind is only a tag here (not "none": the truth is known); the noise is our own
        self.noise = NoiseResult(given, true, given != true, matrix, "random_matrix", 0.0)
        self.train_dataset = self.train_dataset.with_labels(given)
        self._train_augmented = self.train_dataset.with_transform(self.train_transform)
        if self.augmenter is not None:
            self.augmenter.bind(self._train_augmented, given, 10)

    def _load_splits(self):
        splits, names = super()._load_splits()
        train = splits["train"]
        rng = np.random.default_rng(1000 + self.seed)
        drop = np.isin(train.labels, self.minority) & (rng.random(len(train)) >= self.keep_frac)
        splits["train"] = train.subset(np.flatnonzero(~drop))
        return splits, names


def run_one(method: str, seed: int, args) -> dict:
    spec = AUGMENT[method]
    if spec is not None:
        spec = {**spec, "p": args.p, **({"image_ops": args.ops} if args.ops else {})}
    if spec is not None and spec["kind"] == "targeted":
        spec = {**spec, "oversample": args.oversample, "weak": {"rule": "bottom_k", "k": 3}}
    dm = ImbalancedDigits(
        args.minority,
        args.keep_frac,
        minority_noise=args.minority_noise,
        majority_noise=args.majority_noise,
        seed=seed,
        augment=Augmenter.from_config(spec),
    )
    dm.setup()
    L.seed_everything(seed, workers=True, verbose=False)
    model = FoldEnsemble(
        partial(SmallCNN, 1, 10),
        dm.given_labels,
        num_folds=5,
        num_classes=10,
        seed=seed,
        true_labels=dm.true_labels,
        label_smoothing=0.1,
    )
    callbacks = [OOFCollector(), ConfidentLearning(warmup_epochs=args.warmup, action="prune")]
    weak = WeakClasses.from_augment(spec)  # the weak-class rule with kind=targeted
    callbacks += [weak] if weak is not None else []
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=args.epochs,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    model.eval()
    xs, ys = zip(*[(x, y) for x, y, _ in dm.test_dataset], strict=True)
    with torch.inference_mode():
        pred = model(torch.stack(xs)).softmax(-1).mean(0).argmax(-1).numpy()
    y = np.asarray(ys)
    recall = [float((pred[y == k] == k).mean()) for k in range(10)]
    weak_cb = callbacks[2] if len(callbacks) > 2 else None
    return {
        "method": method,
        "seed": seed,
        "accuracy": float((pred == y).mean()),
        "recall": recall,
        "minority_recall": [recall[k] for k in args.minority],
        "train_counts": np.bincount(dm.given_labels, minlength=10).tolist(),
        "weak_history": weak_cb.history if weak_cb is not None else None,
        "seconds": time.perf_counter() - start,
    }


def findings(rows: list[dict]) -> list[str]:
    """What the numbers say about the target (computed, not written by hand)."""

    def mean(method, key):
        vals = [np.mean(r[key]) for r in rows if r["method"] == method]
        return float(np.mean(vals)) if vals else float("nan")

    if not all(any(r["method"] == m for r in rows) for m in AUGMENT):
        return []
    t_rec, u_rec, n_rec = (mean(m, "minority_recall") for m in ("targeted", "uniform", "none"))
    t_acc, u_acc, n_acc = (mean(m, "accuracy") for m in ("targeted", "uniform", "none"))
    met = t_rec > u_rec and t_acc >= u_acc
    wins = sum(
        np.mean(t["minority_recall"]) > np.mean(u["minority_recall"])
        for t in rows
        if t["method"] == "targeted"
        for u in rows
        if u["method"] == "uniform" and u["seed"] == t["seed"]
    )
    chosen = [r["weak_history"][-1]["weak"] for r in rows if r["weak_history"]]
    return [
        "Findings:",
        "",
        f"- Target (targeted beats uniform on the weak classes' recall without losing overall "
        f"accuracy): {'met' if met else 'missed'}. Weak-class recall {t_rec:.3f} vs "
        f"{u_rec:.3f} (targeted higher in {wins} of {len(chosen)} seeds); test accuracy "
        f"{t_acc:.4f} vs {u_acc:.4f}.",
        f"- Against no augmentation: weak-class recall {t_rec:.3f} vs {n_rec:.3f}, accuracy "
        f"{t_acc:.4f} vs {n_acc:.4f}; uniform minus none: {u_acc - n_acc:+.4f} accuracy.",
        f"- The rule's final weak classes: {chosen}.",
    ]


def summarise(rows: list[dict], args, command: str, wall: float, date: str) -> str:
    lines = [
        "# bench_augment: targeted vs uniform vs no augmentation (digits, weak classes)",
        "",
        f"Command: `{command}`",
        "",
        f"Date: {date}; machine: "
        f"{platform.machine()} CPU, torch {torch.__version__}, torch.set_num_threads(1); "
        f"total wall time {wall / 60:.1f} min.",
        "",
        f"Setup: scikit-learn digits; classes {list(args.minority)} keep {args.keep_frac:.0%} of "
        f"their training rows; class-dependent label noise ({args.minority_noise:.0%} of the "
        f"minority classes' labels, {args.majority_noise:.0%} of the others', flipped to a "
        f"random majority class); fold-parallel "
        f"SmallCNN, K=5, label smoothing 0.1, prune from epoch {args.warmup}, "
        f"{args.epochs} epochs; "
        f"seeds {list(args.seeds)}. Image ops: {', '.join(args.ops or ['all seven'])}, each "
        f"with p={args.p}. Targeted: bottom-3 weak classes at level 3, oversampled "
        f"x{args.oversample}; the rest at level 1 (= uniform). The 3 weakest classes are the "
        "subsampled ones, fixed by design.",
        "",
        "| method | test accuracy | recall, 3 weak classes (mean) | "
        + " | ".join(f"recall {k}" for k in args.minority)
        + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in args.minority) + " |",
    ]
    for method in AUGMENT:
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            continue
        acc = np.array([r["accuracy"] for r in mine])
        mr = np.array([r["minority_recall"] for r in mine])  # (seeds, 3)
        per = " | ".join(f"{m:.3f} ± {s:.3f}" for m, s in zip(mr.mean(0), mr.std(0), strict=True))
        lines.append(
            f"| {method} | {acc.mean():.4f} ± {acc.std():.4f} | "
            f"{mr.mean():.3f} ± {mr.mean(1).std():.3f} | {per} |"
        )
    lines += (
        ["", "Mean ± standard deviation over seeds.", ""] + findings(rows) + ["", "Per run:", ""]
    )
    lines += ["| method | seed | accuracy | weak-class recall | classes the rule chose (last) |"]
    lines += ["| --- | --- | --- | --- | --- |"]
    for r in rows:
        chosen = r["weak_history"][-1]["weak"] if r["weak_history"] else "-"
        rec = ", ".join(f"{v:.2f}" for v in r["minority_recall"])
        lines.append(f"| {r['method']} | {r['seed']} | {r['accuracy']:.4f} | {rec} | {chosen} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(AUGMENT), choices=list(AUGMENT))
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--minority", type=int, nargs=3, default=[3, 8, 9])
    p.add_argument("--keep-frac", type=float, default=0.25)
    p.add_argument("--minority-noise", type=float, default=0.3)
    p.add_argument("--majority-noise", type=float, default=0.15)
    p.add_argument("--oversample", type=float, default=3.0)
    p.add_argument("--ops", nargs="+", default=None, help="image ops (default: all seven)")
    p.add_argument("--p", type=float, default=0.5, help="probability of each op")
    p.add_argument("--render", default=None, help="re-render the .md from this .json only")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_augment"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    if args.render:  # the table and findings again from saved runs, without training
        saved = json.loads(Path(args.render).read_text())
        args = argparse.Namespace(**saved["args"])
        text = summarise(saved["rows"], args, saved["command"], saved["wall_s"], saved["date"])
        text += f"\nRe-rendered from the saved runs, without training: `{command}`\n"
        Path(args.out).with_suffix(".md").write_text(text)
        return
    start = time.perf_counter()
    date = f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}"
    rows = []
    for seed in args.seeds:
        for method in args.methods:
            with contextlib.redirect_stdout(io.StringIO()):
                row = run_one(method, seed, args)
            rows.append(row)
            sys.stderr.write(
                f"{method:9s} seed {seed}: acc {row['accuracy']:.4f} weak recall "
                f"{np.round(row['minority_recall'], 3).tolist()} ({row['seconds']:.0f} s)\n"
            )
    wall = time.perf_counter() - start
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(summarise(rows, args, command, wall, date))
    out.with_suffix(".json").write_text(
        json.dumps(
            {"args": vars(args), "command": command, "wall_s": wall, "date": date, "rows": rows},
            indent=2,
        )
        + "\n"
    )
    sys.stderr.write(f"wrote {out.with_suffix('.md')} ({wall / 60:.1f} min)\n")


if __name__ == "__main__":
    main()
