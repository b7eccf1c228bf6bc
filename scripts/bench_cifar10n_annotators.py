"""CIFAR-10N's three real annotators: ``dcloop-annotators`` against majority vote and CROWDLAB.

Data: ``../shared/data/cifar10-subset/cifar10n/annotators.csv``, three Amazon Mechanical Turk
labels for each of the subset's 5,000 training images (CIFAR-10N, Wei et al. 2022); an
image's folder is its true label. Not needed by dcloop at run time.

The model: the out-of-fold (OOF) probabilities of one dcloop run on the subset
(``oof_probs.npy``), trained on CIFAR-10N's aggregate labels (``aggre.csv``, the published
majority vote) with ``noise=none`` and ``data.val_frac=0`` so that every image is a training
row and has an OOF probability. Pass a finished run with ``--run``; without it the script
starts that run itself (``--epochs``, default 8: a short CPU run of the default SmallCNN).

On the SAME probabilities, against the true labels:

* ``dcloop-annotators`` (run as the console script does, ``annotators_main``): its consensus
  (``consensus_labels.csv``) and its majority vote (``majority_labels.csv``, ties at random);
* cleanlab's ``multiannotator.get_label_quality_multiannotator`` called directly (CROWDLAB,
  its defaults) on the wide label matrix read straight from ``annotators.csv``;
* CIFAR-10N's own ``aggre`` label, each single annotator, the model alone (OOF argmax).

Also the human-model agreement the tool reports (per annotator and per class) beside the
truth, and each annotator's CROWDLAB quality score beside their true accuracy.

Example::

    python scripts/bench_cifar10n_annotators.py --run outputs/2026-12-06/03-39-46
    python scripts/bench_cifar10n_annotators.py --epochs 1 --out /tmp/smoke   # quick look
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "cifar10-subset"
OUT = HERE / "results" / "bench_cifar10n_annotators"


def dcloop_command(data: Path, run_dir: Path, epochs: int) -> list[str]:
    """The dcloop run whose OOF probabilities are the model."""
    exe = Path(sys.executable).parent / "dcloop"
    return [
        str(exe),
        "data=csv",
        f"data.source.root={data}",
        f"data.source.manifest={data / 'cifar10n' / 'aggre.csv'}",
        f"data.source.test_manifest={data / 'cifar10n' / 'test.csv'}",
        "data.val_frac=0.0",
        "data.num_workers=0",
        "noise=none",
        "cl.action=detect",
        f"trainer.max_epochs={epochs}",
        "trainer.enable_progress_bar=false",
        "report=false",
        "logger=none",
        "checkpoint=false",
        f"hydra.run.dir={run_dir}",
    ]


def run_overrides(run_dir: Path) -> list[str]:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    return [ln[2:].strip() for ln in path.read_text().splitlines() if ln.startswith("- ")]


def rows_of(paths: list[str], sources: list[str]) -> np.ndarray:
    """The run's training row of each annotated path (``train/<class>/<file>``, the last
    three parts of a source; ``-1``: not a training row)."""
    pos = {"/".join(Path(s).parts[-3:]): i for i, s in enumerate(sources)}
    return np.array([pos.get("/".join(Path(p).parts), -1) for p in paths])


def crowdlab(wide: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, pd.DataFrame, float]:
    """cleanlab's CROWDLAB, its defaults: consensus labels, annotator stats, model weight."""
    from cleanlab.multiannotator import get_label_quality_multiannotator

    frame = pd.DataFrame(wide.astype(float), columns=[f"a{j}" for j in range(wide.shape[1])])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = get_label_quality_multiannotator(frame, probs, verbose=False, return_weights=True)
    cons = res["label_quality"]["consensus_label"].to_numpy(np.int64)
    return cons, res["annotator_stats"], float(res["model_weight"])


def acc(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    m = np.ones(len(a), bool) if mask is None else mask
    return float((a[m] == b[m]).mean()) if m.any() else float("nan")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DATA, help="the cifar10-subset folder")
    p.add_argument("--run", type=Path, help="a finished dcloop run on the subset (see above)")
    p.add_argument("--epochs", type=int, default=8, help="epochs of the run, without --run")
    p.add_argument("--out", type=Path, default=OUT, help="results: OUT.md and OUT.json")
    a = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    command = "python scripts/bench_cifar10n_annotators.py " + " ".join(
        shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:])
    )
    data = a.data.resolve()
    ann_csv = data / "cifar10n" / "annotators.csv"
    if not ann_csv.is_file():
        raise SystemExit(f"{ann_csv} not found: this benchmark needs ../shared/data")
    t0 = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="bench_cifar10n_"))
    logging.getLogger("dcloop.people.multiannotator").setLevel(logging.ERROR)
    if a.run is None:
        run_dir = tmp / "run"
        cmd = dcloop_command(data, run_dir, a.epochs)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        overrides = cmd[1:-1]
    else:
        run_dir = a.run
        overrides = run_overrides(run_dir)
    train_s = time.time() - t0

    from dcloop.people.cli import annotators_main
    from dcloop.people.corrections import base_labels, run_class_names

    names = run_class_names(run_dir)
    base = base_labels(run_dir)
    sources = base["source"].tolist()
    probs = np.load(run_dir / "oof_probs.npy")
    given = base["label"].to_numpy(np.int64)

    wide_df = pd.read_csv(ann_csv, dtype=str, keep_default_na=False)
    rows = rows_of(wide_df["path"].tolist(), sources)
    sub = wide_df[rows >= 0].reset_index(drop=True)  # images the run held out have no OOF
    rows = rows[rows >= 0]
    out_tool = tmp / "annotators"
    t1 = time.time()
    with contextlib.redirect_stdout(io.StringIO()) as console:
        args = [str(run_dir), str(ann_csv), "--out", str(out_tool), "--no-report", "--skip-unknown"]
        code = annotators_main(args)
    tool_s = time.time() - t1
    if code:
        raise SystemExit(f"dcloop-annotators failed ({code})")

    lq = pd.read_csv(out_tool / "label_quality.csv").set_index("index")
    stats = pd.read_csv(out_tool / "annotator_stats.csv", dtype={"annotator": str})
    classes = pd.read_csv(out_tool / "class_agreement.csv")
    summary = json.loads((out_tool / "summary.json").read_text())
    cons_file = pd.read_csv(out_tool / "consensus_labels.csv").set_index("index")
    maj_file = pd.read_csv(out_tool / "majority_labels.csv").set_index("index")

    cols = [c for c in wide_df.columns if c != "path"]
    lookup = {n: k for k, n in enumerate(names)}
    wide = np.array([[lookup[v] for v in sub[c]] for c in cols]).T  # (M, A)
    truth = np.array([lookup[Path(p).parent.name] for p in sub["path"]])
    aggre = pd.read_csv(data / "cifar10n" / "aggre.csv", dtype=str).set_index("path")["label"]
    aggre = np.array([lookup[aggre[p]] for p in sub["path"]])
    model = probs[rows].argmax(1)
    manifest = [o.split("=", 1)[1] for o in overrides if o.startswith("data.source.manifest=")]
    given_name = Path(manifest[0]).name if manifest else "labels.csv"

    t2 = time.time()
    direct, direct_stats, direct_w = crowdlab(wide, probs[rows])
    crowdlab_s = time.time() - t2

    dc_cons = cons_file.loc[rows, "label"].to_numpy(np.int64)
    dc_major = maj_file.loc[rows, "label"].to_numpy(np.int64)
    quality = lq.loc[rows, "consensus_quality"].to_numpy(float)
    right = dc_cons == truth
    quality_auroc = float(roc_auc_score(right, quality)) if 0 < right.sum() < len(right) else None
    n_agree = np.array([len(set(r)) for r in wide])
    split = n_agree > 1  # the annotators disagree: where a consensus method matters
    tie = n_agree == 3
    methods = {
        "dcloop-annotators consensus (CROWDLAB via dcloop)": dc_cons,
        "cleanlab get_label_quality_multiannotator, direct": direct,
        "majority vote (dcloop-annotators, ties at random)": dc_major,
        "CIFAR-10N aggre (published majority)": aggre,
        "model alone (OOF argmax)": model,
        **{f"single annotator: {c}": wide[:, j] for j, c in enumerate(cols)},
        f"given labels of the run ({given_name})": given[rows],
    }
    table = [
        {
            "method": k,
            "accuracy": acc(v, truth),
            "accuracy_disagreed": acc(v, truth, split),
            "accuracy_3way_ties": acc(v, truth, tie),
        }
        for k, v in methods.items()
    ]
    true_acc = {c: acc(wide[:, j], truth) for j, c in enumerate(cols)}
    ann = stats.assign(
        worst_class=[names[int(k)] for k in stats["worst_class"]],
        true_accuracy=stats["annotator"].map(true_acc),
        direct_cleanlab_quality=direct_stats["annotator_quality"].to_numpy(),
    )
    class_true = []
    for k, n in enumerate(names):
        m = truth == k
        class_true.append(
            {
                "class": n,
                "items (true)": int(m.sum()),
                "annotator accuracy (true)": float((wide[m] == k).mean()),
                "model accuracy (true)": acc(model, truth, m),
            }
        )
    res = {
        "command": command,
        "dcloop_run_overrides": overrides,
        "run_dir": str(run_dir),
        "items": len(sub),
        "annotators": cols,
        "items_disagreed": int(split.sum()),
        "items_3way_ties": int(tie.sum()),
        "accuracy": table,
        "consensus_quality_auroc": quality_auroc,
        "dcloop_vs_direct_identical": bool((dc_cons == direct).all()),
        "dcloop_vs_direct_differ": int((dc_cons != direct).sum()),
        "model_weight": {"dcloop": summary["model_weight"], "direct": direct_w},
        "tool_summary": summary,
        "model_oof_accuracy_vs_truth": acc(model, truth),
        "model_oof_accuracy_vs_given": acc(model, given[rows]),
        "human_model_agreement": {
            "model_agrees_with_consensus (tool)": summary["model_agrees_with_consensus"],
            "model_agrees_with_truth": acc(model, truth),
            "mean_annotator_agreement (tool)": summary["mean_annotator_agreement"],
            "annotators_all_agree": float((n_agree == 1).mean()),
        },
        "annotator_stats": ann.to_dict(orient="records"),
        "class_agreement": classes.to_dict(orient="records"),
        "class_truth": class_true,
        "seconds": {"run": train_s, "dcloop_annotators": tool_s, "crowdlab_direct": crowdlab_s},
        "platform": f"{platform.machine()}, python {platform.python_version()}",
        "tool_console": console.getvalue().splitlines()[:3],
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps(res, indent=2, default=float) + "\n")
    a.out.with_suffix(".md").write_text(render(res))
    print(a.out.with_suffix(".md").read_text())
    return res


def _f(x: float) -> str:
    return "n/a" if x != x else f"{x:.4f}"


def render(r: dict) -> str:
    lines = [
        "# CIFAR-10N's real annotators: dcloop-annotators vs majority vote vs CROWDLAB",
        "",
        f"Command: `{r['command']}`",
        "",
        "Model: the OOF probabilities of the dcloop run "
        f"`dcloop {' '.join(r['dcloop_run_overrides'])}`"
        f" (OOF accuracy {r['model_oof_accuracy_vs_truth']:.3f} against the truth, "
        f"{r['model_oof_accuracy_vs_given']:.3f} against its given labels). "
        f"{r['items']} training images of `cifar10-subset`, {len(r['annotators'])} CIFAR-10N "
        f"annotators each (`cifar10n/annotators.csv`); the truth is each image's folder. "
        f"The annotators disagree on {r['items_disagreed']} items, all three differ on "
        f"{r['items_3way_ties']}. {r['platform']}; dcloop-annotators took "
        f"{r['seconds']['dcloop_annotators']:.1f} s, the direct cleanlab call "
        f"{r['seconds']['crowdlab_direct']:.1f} s.",
        "",
        "## Consensus accuracy against the true labels (the same probabilities)",
        "",
        "| labels | all items | items the annotators disagree on | 3-way ties |",
        "| --- | ---: | ---: | ---: |",
    ]
    for row in r["accuracy"]:
        lines.append(
            f"| {row['method']} | {_f(row['accuracy'])} | {_f(row['accuracy_disagreed'])} | "
            f"{_f(row['accuracy_3way_ties'])} |"
        )
    same = (
        "identical on every item"
        if r["dcloop_vs_direct_identical"]
        else (f"different on {r['dcloop_vs_direct_differ']} items")
    )
    lines += [
        "",
        f"dcloop-annotators' consensus and cleanlab's direct call are {same} (model weight "
        f"{r['model_weight']['dcloop']:.3f} vs {r['model_weight']['direct']:.3f}). AUROC of "
        f"the tool's consensus quality score for 'the consensus is the true label': "
        f"{r['consensus_quality_auroc']:.4f}.",
        "",
        "## Human-model agreement (measured on real people)",
        "",
        "| measure | value |",
        "| --- | ---: |",
    ]
    for k, v in r["human_model_agreement"].items():
        lines.append(f"| {k} | {v:.4f} |")
    lines += [
        "",
        "## Annotators: CROWDLAB's quality score vs their true accuracy",
        "",
        "CIFAR-10N's `annotator_1..3` are label slots (`random1..3`), each filled by many "
        "workers, so one 'annotator' here is a slot.",
        "",
        "| annotator | quality (tool) | quality (direct) | true accuracy | agreement with "
        "consensus | agreement with model | worst class |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for s in r["annotator_stats"]:
        lines.append(
            f"| {s['annotator']} | {s['annotator_quality']:.4f} | "
            f"{s['direct_cleanlab_quality']:.4f} | {s['true_accuracy']:.4f} | "
            f"{s['agreement_with_consensus']:.4f} | {s['agreement_with_model']:.4f} | "
            f"{s['worst_class']} |"
        )
    lines += [
        "",
        "## Per class: the tool's agreement tables beside the truth",
        "",
        "Tool columns are per consensus class; truth columns per true class.",
        "",
        "| class | items (consensus) | human agreement (tool) | human-model agreement (tool) "
        "| annotator accuracy (true) | model accuracy (true) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c, t in zip(r["class_agreement"], r["class_truth"], strict=True):
        lines.append(
            f"| {t['class']} | {c['items']} | {c['human_agreement']:.3f} | "
            f"{c['model_agreement']:.3f} | {t['annotator accuracy (true)']:.3f} | "
            f"{t['model accuracy (true)']:.3f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
