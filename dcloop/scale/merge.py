"""The merge step of sequential mode: K OOF shards -> confident learning -> result files.

``dcloop-merge DIR`` (or automatically, by the fold run that completes the set) checks
that every training index is covered by exactly one shard (and by the shard of its own
fold), runs confident learning on the merged ``(N, C)`` matrix with the run's ``cl``
settings, and writes the same files as fold-parallel mode into the round folder:
``label_issues.csv``, ``class_report.csv``, ``noise_matrix.csv``, ``oof_probs.npy``,
``folds.npy``, ``sample_table.pt`` and ``metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dcloop.callbacks import ConfidentLearning
from dcloop.cleaning import CLResult, action_weights
from dcloop.console import emit, run_summary
from dcloop.metrics import detection_metrics
from dcloop.results import issue_table, write_json, write_run_files
from dcloop.sequential import merge_shards
from dcloop.state import SampleTable

log = logging.getLogger(__name__)

LOCK = ".merge.lock"


def shard_paths(round_dir: Path, num_folds: int) -> list[Path]:
    """``oof_fold<k>.npz`` for k in ``[0, K)``; raises naming the folds that are missing."""
    paths = [Path(round_dir) / f"oof_fold{k}.npz" for k in range(num_folds)]
    missing = [k for k, p in enumerate(paths) if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{round_dir}: no OOF shard for fold(s) {missing} of {num_folds}; run them first "
            f"(dcloop -m mode=sequential fold={','.join(map(str, missing))} ...)"
        )
    return paths


def _device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def merge_round(round_dir: str | Path, *, device: str = "auto") -> dict[str, Any]:
    """Merge the K shards of one round folder and write the run's result files there.

    Args:
        round_dir: a ``round_<r>`` folder written by :func:`dcloop.scale.fold_run.run_fold`.
        device: where confident learning runs (``"auto"``: CUDA when available).

    Returns:
        The metrics written to ``metrics.json``.

    Raises:
        FileNotFoundError: the folder has no ``meta.json`` or a fold's shard is missing.
        ValueError: an index is covered twice, not at all, or by another fold's shard.
    """
    d = Path(round_dir)
    if not (d / "meta.json").is_file():
        raise FileNotFoundError(f"{d / 'meta.json'} does not exist: not a sequential round folder")
    meta = json.loads((d / "meta.json").read_text())
    with np.load(d / "meta.npz") as z:
        arrays = {k: z[k] for k in z.files}
    n, k = meta["num_samples"], meta["num_folds"]
    folds = arrays["folds"]
    shards = []  # each shard read once
    for fold, path in enumerate(shard_paths(d, k)):
        with np.load(path) as z:
            index, p = z["index"], z["probs"]
        stray = index[folds[index] != fold]
        if stray.size:
            raise ValueError(
                f"{path}: {stray.size} indices belong to other folds (e.g. {stray[:5].tolist()}): "
                "the shards come from runs with different folds or seeds"
            )
        shards.append((index, p))
    probs = torch.from_numpy(merge_shards(shards, n))
    dev = _device(device)
    cl = ConfidentLearning(**meta["cl"])  # the run's cl settings, checked
    truth = arrays["true_labels"]
    table = SampleTable(arrays["labels"], folds, truth if (truth >= 0).all() else None).to(dev)
    if "confirmed" in arrays:  # a label file's checked rows and weights (dcloop.people)
        table.confirmed.copy_(torch.as_tensor(arrays["confirmed"]))
        table.prior_weights.copy_(torch.as_tensor(arrays["prior_weights"]))
    result = cl.run(table.labels, probs.to(dev), confirmed=table.confirmed)
    table.record_flags(result.flags, result.quality, result.suggested, int(meta["round"]))
    table.weights.copy_(
        action_weights(
            result.flags,
            result.quality,
            action=cl.action,
            floor=cl.downweight_floor,
            power=cl.downweight_power,
        )
        * table.prior_weights
    )
    sources = arrays["sources"].tolist()
    write_run_files(d, table, probs, result, sources, meta.get("class_names"))
    metrics = _metrics(d, meta, arrays, table, result)
    write_json(metrics, d / "metrics.json")
    top = issue_table(table, sources).head(5).to_dict("records")
    emit(run_summary(metrics, d, [r for r in top if r["flagged"]]))
    return metrics


def _metrics(d: Path, meta, arrays, table: SampleTable, result: CLResult) -> dict[str, Any]:
    k = meta["num_folds"]
    test = np.mean([np.load(d / f"test_fold{f}.npz")["probs"] for f in range(k)], axis=0)
    folds = [json.loads((d / f"fold{f}.json").read_text()) for f in range(k)]
    metrics: dict[str, Any] = {
        "data": {
            "source": meta["source"],
            "num_train": meta["num_samples"],
            "num_classes": meta["num_classes"],
        },
        "cleaning": {
            "mode": "sequential",
            "round": meta["round"],
            "num_folds": k,
            "action": meta["cl"].get("action", "prune"),
            "filter_by": meta["cl"].get("filter_by", "prune_by_noise_rate"),
            "num_flagged": int(table.flagged.sum()),
        },
        "noise": {"rate": result.noise_rate},
        "test": {
            "accuracy": float((test.argmax(1) == arrays["test_labels"]).mean()),
            "fold_accuracy": [f["test_accuracy"] for f in folds],
        },
        "folds": folds,
    }
    if table.has_ground_truth:
        metrics["detection"] = detection_metrics(table.flagged, table.is_noisy, table.quality)
    if meta.get("noise_injected"):
        metrics["noise_injected"] = meta["noise_injected"]
    return metrics


def merge_if_complete(round_dir: str | Path, *, device: str = "auto") -> dict[str, Any] | None:
    """Merge when all K shards are there and no other fold has started the merge.

    Called by each fold run after it wrote its shard: the last one to finish sees K
    shards; an exclusive lock file makes sure only one merges.
    """
    d = Path(round_dir)
    meta = json.loads((d / "meta.json").read_text())
    if not all((d / f"oof_fold{k}.npz").is_file() for k in range(meta["num_folds"])):
        return None
    try:
        fd = os.open(d / LOCK, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        log.info("%s: another fold run is merging", d)
        return None
    os.close(fd)
    log.info("%s: all %d shards present; merging", d, meta["num_folds"])
    try:
        return merge_round(d, device=device)
    finally:  # a failed merge or a rerun of the round can merge again
        os.unlink(d / LOCK)


def find_round_dir(path: str | Path) -> Path:
    """A round folder from ``path``: itself, its latest ``round_<r>``, or its single group's."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist")
    if (p / "meta.json").is_file():
        return p
    rounds = [r for r in p.glob("round_*") if (r / "meta.json").is_file()]
    if not rounds:
        groups = sorted(g for g in p.glob("seq-*") if g.is_dir())
        if len(groups) > 1:
            raise ValueError(
                f"{p} holds {len(groups)} sequential runs ({[g.name for g in groups]}): "
                "pass one of them"
            )
        if groups:
            return find_round_dir(groups[0])
        raise FileNotFoundError(f"{p} holds no sequential round folder (round_<r>/meta.json)")
    return max(rounds, key=lambda r: int(r.name.split("_")[1]))


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``dcloop-merge`` console script."""
    parser = argparse.ArgumentParser(
        prog="dcloop-merge",
        description="Merge the OOF shards of a sequential dcloop run and write its result files.",
    )
    parser.add_argument(
        "path",
        help="a round folder (…/seq-<hash>/round_<r>), its seq-<hash> folder (latest round) "
        "or the multirun folder holding one seq-<hash>",
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA if available) | cpu | cuda")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        merge_round(find_round_dir(args.path), device=args.device)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f"dcloop-merge: {err}")
