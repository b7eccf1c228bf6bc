"""A real run directory in a second, without training: for the people-in-the-loop tests.

Digits with 20 % injected noise; the "OOF" probabilities are the true label's one-hot,
blurred, so confident learning flags (nearly) exactly the injected errors. Every file
is written by dcloop's own writers, as ``train()`` writes them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from dcloop.cl import verdict
from dcloop.data import LabelNoiseDataModule
from dcloop.folds import assign_folds
from dcloop.metrics import detection_metrics
from dcloop.results import write_json, write_run_files
from dcloop.state import SampleTable


def make_run(
    run_dir: Path, *, labels_file=None, seed: int = 0, source="digits"
) -> LabelNoiseDataModule:
    """``source``: digits, or a data source with files (e.g. ``ImageFolder(root)``)."""
    noise = {"kind": "symmetric", "rate": 0.2}
    dm = LabelNoiseDataModule(source, noise=noise, seed=seed, labels=labels_file)
    dm.setup()
    n, c = dm.num_train, dm.num_classes
    rng = np.random.default_rng(seed)
    probs = np.full((n, c), 0.02) + rng.random((n, c)) * 0.05
    probs[np.arange(n), dm.true_labels] += 0.8
    probs = torch.tensor(probs / probs.sum(1, keepdims=True), dtype=torch.float32)
    table = SampleTable(dm.given_labels, assign_folds(dm.given_labels, 5, seed=0), dm.true_labels)
    if dm.label_override is not None:
        table.confirmed.copy_(torch.as_tensor(dm.label_override.confirmed))
    result = verdict(table.labels, probs, confirmed=table.confirmed)
    table.record_flags(result.flags, result.quality, result.suggested, 0)
    run_dir.mkdir(parents=True, exist_ok=True)
    dm.save(run_dir)
    sources = dm.train_dataset.sources
    write_run_files(run_dir, table, probs, result, sources, dm.class_names)
    det = detection_metrics(table.flagged, table.is_noisy, table.quality)
    metrics = {
        "data": {"source": dm.source, "num_train": n, "num_classes": c},
        "cleaning": {"num_folds": 5, "action": "prune", "num_flagged": int(table.flagged.sum())},
        "noise": {"rate": result.noise_rate},
        "test": {"accuracy": 0.5},
        "history": [
            {"epoch": e, "num_flagged": 200 + e, "noise_rate_est": 0.2, "quality_mean": 0.7}
            for e in range(3)
        ],
        "detection": det,
        "noise_injected": {
            "kind": "symmetric",
            "rate": 0.2,
            "num_noisy": int(dm.is_noisy.sum()),
            "rate_actual": float(dm.is_noisy.mean()),
        },
    }
    write_json(metrics, run_dir / "metrics.json")
    cfg = {
        "seed": seed,
        "data": {
            "_target_": "dcloop.data.LabelNoiseDataModule",
            "source": "digits",
            "labels": str(labels_file) if labels_file else None,
        },
        "noise": noise,
    }
    OmegaConf.save(OmegaConf.create(cfg), run_dir / "config.yaml")
    return dm
