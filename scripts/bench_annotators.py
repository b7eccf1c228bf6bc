"""Several annotators on digits: cleanlab.multiannotator (CROWDLAB) against majority vote.

Simulation (per seed): the digits training split (1,167 items, true labels known) is
labelled by 5 simulated annotators of accuracy 0.55, 0.65, 0.75, 0.85, 0.95; each item by
1-3 of them (uniform count, annotators drawn uniformly). A wrong label is drawn uniformly
from the other classes, except for the two "biased" annotators (accuracy 0.65 and 0.75),
whose mistakes go to one fixed confusion partner per class (a random derangement) 80 % of
the time.

Consensus methods, compared with the true labels:

* ``majority``: plain majority vote, ties broken at random (seeded)
  (:func:`dcloop.people.multiannotator.majority_vote`);
* ``cleanlab``: :func:`dcloop.people.multiannotator.consensus`, i.e. cleanlab's
  ``get_label_quality_multiannotator`` (``consensus_method="best_quality"``, CROWDLAB). Its
  OOF probabilities come from a K=5 k-fold :class:`~dcloop.models.FoldEnsemble` trained on
  the majority-vote labels (every item's probabilities from the replica that never saw it).

Then one :class:`~dcloop.models.Classifier` (the default SmallCNN, default optimiser, the
same epochs) is trained on each consensus (through a label file, ``data.labels``) and on
the true labels (oracle), and also on the cleanlab consensus with each item's loss weighted
by its consensus quality score; the table gives test accuracy on the digits test split.

Example::

    python scripts/bench_annotators.py                        # the committed results
    python scripts/bench_annotators.py --seeds 0 --epochs 3 --out /tmp/smoke
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shlex
import sys
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch

from dcloop.callbacks import OOFCollector
from dcloop.data import LabelNoiseDataModule
from dcloop.models import Classifier, FoldEnsemble, SmallCNN
from dcloop.people.multiannotator import consensus, majority_vote

ROOT = Path(__file__).resolve().parent
ACCURACIES = (0.55, 0.65, 0.75, 0.85, 0.95)
BIASED = (1, 2)  # annotators whose errors follow a fixed class confusion
OPTIM = {"lr": 3e-3, "weight_decay": 1e-4, "scheduler": "cosine", "label_smoothing": 0.1}


def quiet() -> None:
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "dcloop"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def simulate(true: np.ndarray, c: int, seed: int) -> pd.DataFrame:
    """Long annotations ``item, annotator, label`` of the 5 simulated annotators."""
    rng = np.random.default_rng(seed)
    partner = (np.arange(c) + rng.integers(1, c)) % c  # a fixed wrong class per class
    rows = []
    for i, t in enumerate(true):
        for a in rng.choice(len(ACCURACIES), size=rng.integers(1, 4), replace=False):
            if rng.random() < ACCURACIES[a]:
                lab = t
            elif a in BIASED and rng.random() < 0.8:
                lab = partner[t]
            else:
                lab = (t + rng.integers(1, c)) % c
            rows.append((i, f"a{a}", int(lab)))
    return pd.DataFrame(rows, columns=["index", "annotator", "label"])


def trainer(epochs: int, root: Path, callbacks=()) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        callbacks=list(callbacks),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )


def datamodule(labels: np.ndarray, seed: int, tmp: Path, name: str) -> LabelNoiseDataModule:
    """Digits whose training labels come from a label file (the ``data.labels`` path)."""
    path = tmp / f"{name}.csv"
    pd.DataFrame({"index": np.arange(len(labels)), "label": labels}).to_csv(path, index=False)
    dm = LabelNoiseDataModule("digits", seed=seed, labels=path)
    dm.setup()
    return dm


def oof_probs(labels, seed, epochs, tmp) -> np.ndarray:
    dm = datamodule(labels, seed, tmp, "majority_oof")
    L.seed_everything(seed, verbose=False)
    model = FoldEnsemble(
        partial(SmallCNN, 1, dm.num_classes), dm.given_labels, num_folds=5, seed=seed, **OPTIM
    )
    oof = OOFCollector()
    trainer(epochs, tmp, [oof]).fit(model, datamodule=dm)
    return oof.probs.numpy()


def test_accuracy(labels, seed, epochs, tmp, name, weights=None) -> float:
    dm = datamodule(labels, seed, tmp, name)
    L.seed_everything(seed, verbose=False)
    model = Classifier(
        partial(SmallCNN, 1, dm.num_classes), dm.num_classes, seed=seed, weights=weights, **OPTIM
    )
    tr = trainer(epochs, tmp)
    tr.fit(model, datamodule=dm)
    return float(tr.test(model, datamodule=dm, verbose=False)[0]["test/acc"])


def one_seed(seed: int, epochs: int) -> dict:
    ref = LabelNoiseDataModule("digits", seed=seed)
    ref.setup()
    true, c, n = ref.given_labels, ref.num_classes, ref.num_train
    long = simulate(true, c, seed)
    items = np.sort(long["index"].unique())
    wide = long.pivot(index="index", columns="annotator", values="label").to_numpy(float)
    mv, _ = majority_vote(wide, c, seed=seed)
    assert len(items) == n  # every item has at least one annotator
    out = {"seed": seed, "items": n, "annotations": len(long)}
    per_ann = long.assign(ok=long["label"].to_numpy() == true[long["index"]])
    out["annotator_accuracy"] = per_ann.groupby("annotator")["ok"].mean().round(4).to_dict()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        t0 = time.perf_counter()
        probs = oof_probs(mv, seed, epochs, tmp)
        cons = consensus(long, probs, ref.class_names, seed=seed)
        cl = cons.items["consensus_label"].to_numpy()
        quality = cons.items["consensus_quality"].to_numpy(np.float32)
        out["consensus_accuracy"] = {
            "majority": float((mv == true).mean()),
            "cleanlab": float((cl == true).mean()),
            "model_oof_argmax": float((probs.argmax(1) == true).mean()),
        }
        multi = cons.items["num_annotations"].to_numpy() > 1
        out["consensus_accuracy_multi"] = {
            "majority": float((mv[multi] == true[multi]).mean()),
            "cleanlab": float((cl[multi] == true[multi]).mean()),
        }
        out["quality_auroc"] = _auroc(quality, cl == true)
        out["test_accuracy"] = {
            "oracle": test_accuracy(true, seed, epochs, tmp, "true"),
            "majority": test_accuracy(mv, seed, epochs, tmp, "majority"),
            "cleanlab": test_accuracy(cl, seed, epochs, tmp, "cleanlab"),
            "cleanlab_weighted": test_accuracy(cl, seed, epochs, tmp, "cleanlab_w", quality),
        }
        out["annotator_quality"] = (
            cons.annotators.set_index("annotator")["annotator_quality"].round(4).to_dict()
        )
        out["wall_s"] = time.perf_counter() - t0
    return out


def _auroc(score: np.ndarray, positive: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(positive, score)) if 0 < positive.sum() < len(positive) else 1.0


def mean_sd(vals) -> str:
    a = np.asarray(vals, float)
    return f"{a.mean():.4f} ± {a.std(ddof=1) if a.size > 1 else 0.0:.4f}"


def report(runs: list[dict], args, wall: float) -> str:
    cmd = "python scripts/bench_annotators.py " + shlex.join(sys.argv[1:])
    lines = [
        "# Several annotators on digits: cleanlab.multiannotator vs majority vote",
        "",
        f"Command: `{cmd.strip()}`",
        "",
        f"Seeds {args.seeds}, {args.epochs} epochs for the OOF k-fold run (K=5 FoldEnsemble on "
        "the majority-vote labels) and for every Classifier (SmallCNN); "
        f"torch.set_num_threads({args.threads}); CPU: {platform.processor() or platform.machine()}"
        f", torch {torch.__version__}; total wall time {wall / 60:.1f} min.",
        "",
        f"Annotators: accuracies {list(ACCURACIES)}; annotators a1 and a2 confuse each class "
        "with one fixed partner class (80 % of their mistakes); each item labelled by 1-3 "
        f"annotators (about {np.mean([r['annotations'] for r in runs]):.0f} labels for "
        f"{runs[0]['items']} items). Majority-vote ties are broken at random. cleanlab's "
        "OOF probabilities come from the k-fold run on the majority-vote labels.",
        "",
        "## Consensus accuracy against the true labels (mean ± sd over seeds)",
        "",
        "| method | all items | items with 2-3 annotators |",
        "| --- | --- | --- |",
    ]
    for m in ("majority", "cleanlab"):
        lines.append(
            f"| {m} | {mean_sd([r['consensus_accuracy'][m] for r in runs])} | "
            f"{mean_sd([r['consensus_accuracy_multi'][m] for r in runs])} |"
        )
    lines.append(
        f"| (model OOF argmax alone) | "
        f"{mean_sd([r['consensus_accuracy']['model_oof_argmax'] for r in runs])} | |"
    )
    lines += [
        "",
        f"AUROC of cleanlab's consensus quality score for 'consensus is right': "
        f"{mean_sd([r['quality_auroc'] for r in runs])}.",
        "",
        "## Test accuracy of a SmallCNN trained on each consensus (mean ± sd over seeds)",
        "",
        "| training labels | test accuracy |",
        "| --- | --- |",
    ]
    for m in ("oracle", "majority", "cleanlab", "cleanlab_weighted"):
        lines.append(f"| {m} | {mean_sd([r['test_accuracy'][m] for r in runs])} |")
    lines += [
        "",
        "`cleanlab_weighted`: cleanlab's consensus, each item's loss weighted by its consensus "
        "quality score.",
        "",
        "## Per seed",
        "",
        "| seed | majority | cleanlab | test: oracle | majority | cleanlab | cleanlab_w |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in runs:
        ca, ta = r["consensus_accuracy"], r["test_accuracy"]
        lines.append(
            f"| {r['seed']} | {ca['majority']:.4f} | {ca['cleanlab']:.4f} | {ta['oracle']:.4f} "
            f"| {ta['majority']:.4f} | {ta['cleanlab']:.4f} | {ta['cleanlab_weighted']:.4f} |"
        )
    lines += [
        "",
        f"Annotator accuracy (true) and cleanlab's annotator quality, seed {runs[0]['seed']}:",
        "",
        "| annotator | accuracy | cleanlab quality |",
        "| --- | --- | --- |",
    ]
    for a, acc in sorted(runs[0]["annotator_accuracy"].items()):
        lines.append(f"| {a} | {acc:.3f} | {runs[0]['annotator_quality'][a]:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "results" / "bench_annotators"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet()
    start = time.perf_counter()
    runs = []
    for s in args.seeds:
        runs.append(one_seed(s, args.epochs))
        print(json.dumps(runs[-1]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    wall = time.perf_counter() - start
    out.with_suffix(".md").write_text(report(runs, args, wall))
    meta = {"args": vars(args), "wall_s": wall, "runs": runs}
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
