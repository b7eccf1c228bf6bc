"""A run's result files as a callback: what ``dcloop`` writes, for plain-Python runs too."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import EarlyStopping

from dcloop.callbacks.confident_learning import ConfidentLearning
from dcloop.callbacks.weak_classes import WeakClasses
from dcloop.data.badfiles import SKIPPED_FILES_CSV
from dcloop.metrics import injected_noise, run_metrics, weak_run, weak_run_warning
from dcloop.people.report import write_report
from dcloop.results import write_json, write_run_files
from dcloop.timing import phase_times, timed

log = logging.getLogger(__name__)


def find_callback(trainer: L.Trainer, kind: type) -> Any:
    """The last callback of type ``kind`` in ``trainer.callbacks`` (``None`` if there is none)."""
    found = [c for c in getattr(trainer, "callbacks", []) if isinstance(c, kind)]
    return found[-1] if found else None


class RunResults(L.Callback):
    """Writes a run's files into ``output_dir`` (see README, "Results").

    * fit start (rank 0): ``labels.csv`` and ``noise_matrix_true.csv`` from the datamodule's
      ``save`` (the given labels before any training);
    * fit end: the final verdict of the trainer's :class:`ConfidentLearning` (one more on
      the evidence when no step ran), ``label_issues.csv``, ``class_report.csv``,
      ``noise_matrix.csv``, ``oof_probs.npy`` (+ ``oof_probs_smoothed.npy``), ``folds.npy``,
      ``sample_table.pt`` and ``metrics.json``;
    * after the test: ``metrics.json`` again with the test accuracy, then ``report.html``.

    Other callbacks add to ``metrics.json`` through a ``run_metrics(trainer, pl_module)``
    method returning a dict (e.g. :class:`~dcloop.callbacks.WeakClasses` adds ``augment``).

    Args:
        output_dir: the run folder (default: ``trainer.default_root_dir``).
        report: write ``report.html`` after the test.
    """

    def __init__(self, output_dir: str | Path | None = None, *, report: bool = True) -> None:
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.report = bool(report)
        self.metrics: dict[str, Any] = {}
        self.report_path: Path | None = None
        self._start = time.perf_counter()  # reset at fit setup: wall time counts from there
        self._test_start: float | None = None
        # True while the run goes on after the ensemble's test (the kept student): the
        # files are then written by finish(), called by that run.
        self.hold = False

    def run_dir(self, trainer: L.Trainer) -> Path:
        return self.output_dir if self.output_dir is not None else Path(trainer.default_root_dir)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._start = time.perf_counter()
        dm = trainer.datamodule
        if trainer.is_global_zero and dm is not None and hasattr(dm, "save"):
            run_dir = self.run_dir(trainer)
            run_dir.mkdir(parents=True, exist_ok=True)
            dm.save(run_dir)  # given/true labels and the noise mask, before any training

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        cl = find_callback(trainer, ConfidentLearning)
        if cl is None or not hasattr(pl_module, "samples"):
            return
        table = pl_module.samples
        result = cl.last_result
        if result is None:  # confident learning never ran in the loop (warm-up > max_epochs)
            result = cl.judge(table, cl.collector.probs)
            table.apply(result, -1)  # recorded; the weights stay as trained
            cl.last_result = result
        self.metrics = self._metrics(trainer, pl_module, cl)
        if not trainer.is_global_zero:
            return
        run_dir = self.run_dir(trainer)
        dm = trainer.datamodule
        names = list(dm.class_names) if getattr(dm, "class_names", None) else None
        weak = getattr(find_callback(trainer, WeakClasses), "first_weak", None)
        with timed(trainer, "result_files"):
            write_run_files(run_dir, table, cl.collector.probs, result, cl.sources, names, weak)
            if cl.evidence is not None:  # what the verdict was computed on (EMA over epochs)
                np.save(run_dir / "oof_probs_smoothed.npy", cl.evidence.float().cpu().numpy())
            self.write_metrics(trainer)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._test_start = phase_times(trainer).boundary(None)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """After the test (after every callback's ``on_test_end``): the test accuracy into
        ``metrics.json``, then ``report.html``."""
        if stage != "test":
            return
        start = getattr(self, "_test_start", None)
        if start is not None:  # the test loop's seconds, before metrics.json is written
            phase_times(trainer).add("test", phase_times(trainer).boundary(None) - start)
            self._test_start = None
        cl = find_callback(trainer, ConfidentLearning)
        if cl is None or not self.metrics:
            return
        acc = (
            float("nan")
            if trainer.callback_metrics.get("test/acc") is None
            else float(trainer.callback_metrics["test/acc"])
        )
        self.metrics["test"] = {"accuracy": acc, "ensemble_accuracy": acc}
        self.metrics["kept"] = {"model": "ensemble", "test_accuracy": acc}
        if not self.hold:
            self.finish(trainer)

    def finish(self, trainer: L.Trainer, **extra: Any) -> None:
        """``metrics.json`` (with ``extra`` top-level keys) and ``report.html``: after the test,
        or, when a run goes on after it (``hold``: the kept student), when that run calls."""
        if not trainer.is_global_zero:
            self.metrics.update(extra)
            return
        with timed(trainer, "result_files"):
            self.write_metrics(trainer, **extra)
            if self.report:  # (matplotlib is imported only here, by write_report)
                dm = trainer.datamodule
                dataset = getattr(dm, "train_dataset", None)
                self.report_path = write_report(self.run_dir(trainer), dataset=dataset)

    def write_metrics(self, trainer: L.Trainer, **extra: Any) -> Path:
        """(Re)write ``metrics.json`` with the latest timing and ``extra`` top-level keys."""
        self.metrics.update(extra)
        total = time.perf_counter() - self._start
        self.metrics["wall_time_s"] = total
        self.metrics["timing"] = phase_times(trainer).as_dict(total)
        return write_json(self.metrics, self.run_dir(trainer) / "metrics.json")

    def _metrics(self, trainer, pl_module, cl: ConfidentLearning) -> dict[str, Any]:
        table, dm = pl_module.samples, trainer.datamodule
        metrics = run_metrics(
            mode="parallel",
            source=getattr(dm, "source", None),
            table=table,
            num_classes=int(cl.collector.num_classes),
            num_folds=int(getattr(pl_module, "num_folds", int(table.folds.max()) + 1)),
            policy=cl.step_policy,
            noise_rate=cl.last_result.noise_rate,
            history=cl.history,
            safety=cl.summary(),
            guard_events=cl.guard_events,
            noise_injected=injected_noise(dm),
        )
        metrics["cleaning"]["vectorized"] = getattr(pl_module, "vectorized", None)
        # The last epoch's validation accuracy (the ensemble): what sweeps optimise.
        metrics["val"] = {"accuracy": cl.epochs[-1]["val_acc"] if cl.epochs else None}
        metrics["test"] = {"accuracy": float("nan")}  # filled in after the test
        if dm is not None and hasattr(dm, "skipped_files"):
            metrics["data"]["num_skipped_files"] = len(dm.skipped_files or [])
            if dm.skipped_files:  # where the list is, relative to the run folder
                metrics["data"]["skipped_files_list"] = SKIPPED_FILES_CSV
        metrics.update(_what_happened(trainer, cl, metrics))
        for cb in trainer.callbacks:  # other callbacks' sections (e.g. augment)
            contribute = getattr(cb, "run_metrics", None)
            if callable(contribute) and cb is not self:
                metrics.update(contribute(trainer, pl_module) or {})
        return metrics


def _what_happened(trainer: L.Trainer, cl: ConfidentLearning, metrics: dict) -> dict[str, Any]:
    """What a person must know to read the run (issue 24): early stopping, and a run too weak
    for its flags to mean label errors (``fast_dev_run``, or a model near chance)."""
    out: dict[str, Any] = {}
    stop = find_callback(trainer, EarlyStopping)
    if stop is not None and stop.stopped_epoch > 0:
        best = getattr(stop, "best_score", None)
        out["early_stopping"] = {
            "epoch": int(stop.stopped_epoch) + 1,  # 1-based, as the history
            "monitor": str(stop.monitor),
            "best": None if best is None else float(best),
        }
    oof = cl.epochs[-1].get("oof_acc") if cl.epochs else None
    weak = weak_run(
        oof,
        int(metrics["data"]["num_classes"]),
        fast_dev_run=bool(getattr(trainer, "fast_dev_run", False)),
    )
    if weak is not None:
        out["weak_run"] = weak
        out["warnings"] = [*(metrics.get("warnings") or []), weak_run_warning(weak)]
    return out
