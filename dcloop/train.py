"""``train(cfg)``: one dcloop run from a composed config. Hydra lives only in ``cli``."""

from __future__ import annotations

import functools
import inspect
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from dcloop.augment.pipeline import add_run_metrics, augment_callbacks, augment_kwargs, weak_epochs
from dcloop.beyond.hooks import after_run, check_before_run
from dcloop.callbacks import ConfidentLearning, EpochCheckpoint, OOFCollector
from dcloop.cleaning import CLResult
from dcloop.console import emit, run_summary
from dcloop.data import check_item
from dcloop.folds import check_num_folds
from dcloop.metrics import detection_metrics
from dcloop.models import Classifier, FoldEnsemble
from dcloop.people.labelfile import attach_label_file
from dcloop.people.report import write_report
from dcloop.results import issue_table, write_json, write_run_files
from dcloop.signals import exit_on_signal
from dcloop.state import digest
from dcloop.timing import LoopTiming, phase_times, timed
from dcloop.validation import check_run_config

log = logging.getLogger(__name__)


def net_factory(net_cfg: DictConfig, in_shape, num_classes: int, extra=None):
    """The model config's partial, completed with the data's shape and class count.

    ``in_shape``, ``in_channels``, ``num_classes`` and the data source's ``extra`` keywords
    (``dm.net_kwargs``, e.g. a text vocabulary's ``vocab_size``) are filled in when the
    network's signature takes them and the config does not set them.
    """
    factory = instantiate(net_cfg)
    if not isinstance(factory, functools.partial):
        raise ValueError("model.net must be a factory: set `_partial_: true` on it")
    params = inspect.signature(factory.func).parameters
    known = {
        "in_shape": tuple(in_shape),
        "in_channels": int(in_shape[0]),
        "num_classes": int(num_classes),
        **dict(extra or {}),
    }
    extra = {k: v for k, v in known.items() if k in params and k not in factory.keywords}
    return functools.partial(factory, **extra)


@dataclass
class Run:
    """Everything one run builds from its config."""

    dm: Any
    model: FoldEnsemble
    oof: OOFCollector
    cl: ConfidentLearning
    trainer: L.Trainer
    sources: list[str]


def build(cfg: DictConfig, run_dir: Path) -> Run:
    """Instantiate the datamodule, module, callbacks and trainer of a run.

    All input checks (data path, labels, empty classes, K, dataset items) happen here,
    before any training starts.
    """
    dm = instantiate(
        cfg.data, noise=OmegaConf.to_container(cfg.noise), seed=cfg.seed, **augment_kwargs(cfg)
    )
    dm.setup("fit")
    check_item(dm.train_dataset[0])
    check_num_folds(dm.given_labels, cfg.folds, class_names=getattr(dm, "class_names", None))
    check_before_run(cfg, dm)  # dcloop.beyond: discrepancy=true needs a test split
    sources = [dm.source_of(i) for i in range(dm.num_train)]
    model = FoldEnsemble(
        net_factory(cfg.model.net, dm.input_shape, dm.num_classes, getattr(dm, "net_kwargs", None)),
        dm.given_labels,
        num_folds=cfg.folds,
        num_classes=dm.num_classes,
        seed=cfg.seed,
        true_labels=dm.true_labels if dm.has_ground_truth else None,
        **OmegaConf.to_container(cfg.model.optim),
    )
    attach_label_file(model.samples, getattr(dm, "label_override", None))  # dcloop.people
    model.run_info["sources"] = digest(sources)  # checked against the checkpoint on resume
    oof = OOFCollector()
    clcb = ConfidentLearning(**OmegaConf.to_container(cfg.cl), output_dir=run_dir, sources=sources)
    callbacks: list[L.Callback] = [oof, clcb, *augment_callbacks(dm), LoopTiming()]  # + WeakClasses
    if cfg.checkpoint:  # last.ckpt at every epoch end, atomically (after confident learning)
        callbacks.append(EpochCheckpoint(run_dir / "checkpoints"))
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=logger,
        enable_checkpointing=bool(cfg.checkpoint),
        default_root_dir=str(run_dir),
    )
    return Run(dm, model, oof, clcb, trainer, sources)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run k-fold training with in-loop confident learning; write results; summarise.

    Args:
        cfg: a composed dcloop config (see ``conf/config.yaml``).

    Returns:
        The metrics written to ``metrics.json``.
    """
    check_run_config(cfg)  # seed, folds, max_epochs, resume: before anything is built
    if cfg.get("mode", "parallel") != "parallel":  # one fold per run: dcloop.scale
        from dcloop.scale.fold_run import run_fold

        return run_fold(cfg)
    start = time.perf_counter()
    run_dir = Path(cfg.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    run = build(cfg, run_dir)
    if run.trainer.is_global_zero:
        run.dm.save(run_dir)  # given/true labels and noise mask, before any training
    with exit_on_signal(run.trainer):  # SIGTERM / Ctrl+C: exit 143 / 130, naming the checkpoint
        run.trainer.fit(run.model, datamodule=run.dm, ckpt_path=cfg.get("resume"))
    with timed(run.trainer, "test"):
        test = run.trainer.test(run.model, datamodule=run.dm, verbose=False)
    table = run.model.samples
    result = run.cl.last_result
    if result is None:  # confident learning never ran in the loop (warm-up > max_epochs)
        result = run.cl.judge(table, run.oof.probs)
        table.record_flags(result.flags, result.quality, result.suggested, -1)
    metrics = run_metrics(run, result, test[0] if test else {})
    if cfg.get("refit"):
        with timed(run.trainer, "refit"):
            metrics["test"]["refit_accuracy"] = refit(cfg, run)
    metrics["wall_time_s"] = time.perf_counter() - start
    if run.trainer.is_global_zero:
        names = list(run.dm.class_names) if getattr(run.dm, "class_names", None) else None
        weak = weak_epochs(run.trainer)  # class_report.csv `weak` column (dcloop.augment)
        with timed(run.trainer, "result_files"):
            write_run_files(run_dir, table, run.oof.probs, result, run.sources, names, weak)
            if run.cl.evidence is not None:  # what the verdict was computed on (EMA over epochs)
                np.save(run_dir / "oof_probs_smoothed.npy", run.cl.evidence.float().cpu().numpy())
            OmegaConf.save(cfg, run_dir / "config.yaml")
        metrics["timing"] = phase_times(run.trainer).as_dict(time.perf_counter() - start)
        write_json(metrics, run_dir / "metrics.json")
        after_run(cfg, run, run_dir)  # dcloop.beyond: COCO write-back, train/test discrepancy
        report = None
        if cfg.get("report", True):  # dcloop.people: report.html
            report = write_report(run_dir, dataset=getattr(run.dm, "train_dataset", None))
        top = issue_table(table, run.sources).head(5).to_dict("records")
        emit(run_summary(metrics, run_dir, [r for r in top if r["flagged"]]))
        if report is not None:
            emit(f"  report      {report} (open it in a browser)")
    return metrics


def refit(cfg: DictConfig, run: Run) -> float:
    """Train one network on the cleaned data (the final weights); its test accuracy."""
    dm = run.dm
    model = Classifier(
        net_factory(cfg.model.net, dm.input_shape, dm.num_classes, getattr(dm, "net_kwargs", None)),
        dm.num_classes,
        weights=run.model.samples.weights.cpu(),
        seed=cfg.seed,
        **{k: v for k, v in OmegaConf.to_container(cfg.model.optim).items() if k != "vectorize"},
    )
    trainer = instantiate(
        cfg.trainer, logger=False, enable_checkpointing=False, default_root_dir=str(cfg.output_dir)
    )
    trainer.fit(model, datamodule=dm)
    test = trainer.test(model, datamodule=dm, verbose=False)
    return float(test[0]["test/acc"])


def min_class_kept(table, num_classes: int) -> float:
    """The smallest fraction of a class's given labels still trained on (weight > 0)."""
    given = torch.bincount(table.labels, minlength=num_classes).float()
    kept = torch.bincount(table.labels[table.weights > 0], minlength=num_classes).float()
    return float((kept / given.clamp_min(1)).min())


def run_metrics(run: Run, result: CLResult, test: dict) -> dict[str, Any]:
    """The content of ``metrics.json``."""
    table, dm = run.model.samples, run.dm
    metrics: dict[str, Any] = {
        "data": {"source": dm.source, "num_train": dm.num_train, "num_classes": dm.num_classes},
        "cleaning": {
            "num_folds": run.model.num_folds,
            "action": run.cl.action,
            "filter_by": run.cl.filter_by,
            "num_flagged": int(table.flagged.sum()),
            "min_class_kept_frac": min_class_kept(table, dm.num_classes),
            "vectorized": run.model.vectorized,
        },
        "noise": {"rate": result.noise_rate},
        # The last epoch's validation accuracy (the ensemble): what sweeps optimise.
        "val": {"accuracy": run.cl.epochs[-1]["val_acc"] if run.cl.epochs else None},
        "test": {"accuracy": float(test.get("test/acc", float("nan")))},
        "history": run.cl.history,
        "safety": run.cl.summary(),
        "warnings": [
            f"epoch {e['epoch']}: {'; '.join(e['problems'])} ({e['action']})"
            for e in run.cl.guard_events
        ],
    }
    if dm.has_ground_truth:
        metrics["detection"] = detection_metrics(table.flagged, table.is_noisy, table.quality)
        metrics["noise_injected"] = {
            "kind": dm.noise.kind,
            "rate": dm.noise.rate,
            "num_noisy": int(dm.is_noisy.sum()),
            "rate_actual": float(dm.is_noisy.mean()),
        }
    return add_run_metrics(metrics, dm, run.trainer)  # dcloop.augment: weak classes, skipped
