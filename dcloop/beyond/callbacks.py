"""dcloop.beyond's run outputs as callbacks: COCO write-back and train/test discrepancy."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L

from dcloop.results import issue_table

log = logging.getLogger(__name__)

#: Fewest test samples the train/test discrepancy analysis works with.
MIN_TEST = 10


def _run_dir(output_dir: str | Path | None, trainer: L.Trainer) -> Path:
    return Path(output_dir) if output_dir is not None else Path(trainer.default_root_dir)


class CocoResults(L.Callback):
    """After the test of a ``data=coco`` run: ``label_issues_coco.json`` and
    ``flagged_boxes/*.png`` (:func:`dcloop.beyond.detection.write_coco_results`); with any
    other data source it does nothing and imports nothing heavy."""

    def __init__(self, output_dir: str | Path | None = None) -> None:
        self.output_dir = output_dir

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        if getattr(dm, "source", None) != "coco" or not trainer.is_global_zero:
            return
        from dcloop.beyond.detection import write_coco_results

        issues = issue_table(pl_module.samples, dm.train_sources)
        write_coco_results(_run_dir(self.output_dir, trainer), dm, issues)


class Discrepancy(L.Callback):
    """After the test: ``discrepancy/`` with UMAP and t-SNE maps of train and test embeddings,
    ``discrepancy.json`` and ``test_only_patterns.csv``
    (:func:`dcloop.beyond.discrepancy.run_discrepancy`).

    Fails at setup, before training, when the test split has fewer than :data:`MIN_TEST`
    samples.
    """

    def __init__(self, output_dir: str | Path | None = None, **kwargs: Any) -> None:
        self.output_dir = output_dir
        self.kwargs = kwargs

    @classmethod
    def when(cls, enabled: bool, **kwargs: Any) -> Discrepancy | None:
        """The callback if ``enabled`` (the top-level ``discrepancy`` switch), else ``None``."""
        return cls(**kwargs) if enabled else None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        n = len(getattr(trainer.datamodule, "test_dataset", None) or [])
        if n < MIN_TEST:
            raise ValueError(
                f"discrepancy=true compares train with test, but the test split has {n} "
                f"sample(s) (need >= {MIN_TEST}): raise data.test_frac or set discrepancy=false"
            )

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        from dcloop.beyond.discrepancy import run_discrepancy

        out = _run_dir(self.output_dir, trainer) / "discrepancy"
        run_discrepancy(pl_module, trainer.datamodule, out, **self.kwargs)
