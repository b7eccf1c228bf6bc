"""``train(cfg)``: one dcloop run from a composed config. Hydra lives only in ``cli``."""

from __future__ import annotations

import functools
import inspect
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from dcloop.callbacks import ConfidentLearning, OOFCollector
from dcloop.console import emit, run_summary
from dcloop.data import check_item
from dcloop.metrics import detection_metrics
from dcloop.models import FoldEnsemble
from dcloop.results import class_report, issue_table, write_csv, write_json

log = logging.getLogger(__name__)


def net_factory(net_cfg: DictConfig, in_shape, num_classes: int):
    """The model config's partial, completed with the data's shape and class count.

    ``in_shape``, ``in_channels`` and ``num_classes`` are filled in when the network's
    signature takes them and the config does not set them.
    """
    factory = instantiate(net_cfg)
    if not isinstance(factory, functools.partial):
        raise ValueError("model.net must be a factory: set `_partial_: true` on it")
    params = inspect.signature(factory.func).parameters
    known = {
        "in_shape": tuple(in_shape),
        "in_channels": int(in_shape[0]),
        "num_classes": int(num_classes),
    }
    extra = {k: v for k, v in known.items() if k in params and k not in factory.keywords}
    return functools.partial(factory, **extra)


def build(cfg: DictConfig, run_dir: Path):
    """Instantiate the datamodule, module, callbacks and trainer of a run."""
    dm = instantiate(cfg.data, noise=OmegaConf.to_container(cfg.noise), seed=cfg.seed)
    dm.setup("fit")
    item = dm.train_dataset[0]
    check_item(item)
    sources = [dm.source_of(i) for i in range(dm.num_train)]
    model = FoldEnsemble(
        net_factory(cfg.model.net, dm.input_shape, dm.num_classes),
        dm.given_labels,
        num_folds=cfg.folds,
        num_classes=dm.num_classes,
        seed=cfg.seed,
        true_labels=dm.true_labels if dm.has_ground_truth else None,
        **OmegaConf.to_container(cfg.model.optim),
    )
    oof = OOFCollector()
    clcb = ConfidentLearning(**OmegaConf.to_container(cfg.cl), output_dir=run_dir, sources=sources)
    callbacks: list[L.Callback] = [oof, clcb]
    if cfg.checkpoint:
        callbacks.append(
            L.pytorch.callbacks.ModelCheckpoint(
                dirpath=run_dir / "checkpoints",
                save_last=True,
                save_top_k=0,
                save_on_train_epoch_end=True,
            )
        )
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=logger, default_root_dir=str(run_dir)
    )
    return dm, model, oof, clcb, trainer, sources


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run k-fold training with in-loop confident learning; write results; summarise.

    Args:
        cfg: a composed dcloop config (see ``conf/config.yaml``).

    Returns:
        The metrics written to ``metrics.json``.
    """
    start = time.perf_counter()
    run_dir = Path(cfg.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    dm, model, oof, clcb, trainer, sources = build(cfg, run_dir)
    dm.save(run_dir)
    ckpt = cfg.get("resume")
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt)
    test = trainer.test(model, datamodule=dm, verbose=False)
    metrics = finish(run_dir, dm, model, oof, clcb, sources, test[0] if test else {}, cfg)
    metrics["wall_time_s"] = time.perf_counter() - start
    if trainer.is_global_zero:
        write_json(metrics, run_dir / "metrics.json")
        top = issue_table(model.samples, sources).head(5).to_dict("records")
        emit(run_summary(metrics, run_dir, [r for r in top if r["flagged"]]))
    return metrics


def finish(
    run_dir: Path,
    dm,
    model: FoldEnsemble,
    oof: OOFCollector,
    clcb: ConfidentLearning,
    sources,
    test: dict,
    cfg: DictConfig,
) -> dict[str, Any]:
    """Write the end-of-run files and assemble ``metrics.json``'s content."""
    table = model.samples
    result = clcb.last_result or clcb.run(table.labels, oof.probs)
    if clcb.last_result is None:  # CL never ran in the loop (warm-up >= max_epochs)
        table.record_flags(result.flags, result.quality, result.suggested, -1)
    metrics: dict[str, Any] = {
        "data": {"source": dm.source, "num_train": dm.num_train, "num_classes": dm.num_classes},
        "cleaning": {
            "num_folds": model.num_folds,
            "action": clcb.action,
            "filter_by": clcb.filter_by,
            "num_flagged": int(table.flagged.sum()),
            "vectorized": model.vectorized,
        },
        "noise": {"rate": result.noise_rate},
        "test": {"accuracy": float(test.get("test/acc", float("nan")))},
        "history": clcb.history,
    }
    if dm.has_ground_truth:
        det = detection_metrics(table.flagged, table.is_noisy, table.quality)
        metrics["detection"] = det
        metrics["noise_injected"] = {
            "kind": dm.noise.kind,
            "rate": dm.noise.rate,
            "num_noisy": int(dm.is_noisy.sum()),
            "rate_actual": float(dm.is_noisy.mean()),
        }
    if not L.pytorch.utilities.rank_zero_only.rank == 0:
        return metrics
    names = list(dm.class_names) if getattr(dm, "class_names", None) else None
    write_csv(issue_table(table, sources), run_dir / "label_issues.csv")
    write_csv(
        class_report(table, oof.probs, result.class_noise_rate, names), run_dir / "class_report.csv"
    )
    nm = result.noise_matrix.cpu().numpy()
    labels = names or [str(k) for k in range(nm.shape[0])]
    write_csv(
        pd.DataFrame(nm, columns=[f"true_{c}" for c in labels])
        .assign(given=[f"given_{c}" for c in labels])
        .set_index("given")
        .reset_index(),
        run_dir / "noise_matrix.csv",
    )
    np.save(run_dir / "oof_probs.npy", oof.probs.float().cpu().numpy())
    np.save(run_dir / "folds.npy", table.folds.cpu().numpy())
    OmegaConf.save(cfg, run_dir / "config.yaml")
    torch.save(table.state_dict(), run_dir / "sample_table.pt")
    return metrics
