"""The one call ``dcloop.train.train`` makes into :mod:`dcloop.beyond` after a run."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def after_run(cfg: Any, run: Any, run_dir: str | Path) -> None:
    """Extra outputs of a finished run (rank 0, after the run files are written).

    * ``data.source == "coco"``: ``label_issues_coco.json`` and ``flagged_boxes/*.png``
      (:func:`dcloop.beyond.detection.write_coco_results`).
    * ``discrepancy: true``: ``discrepancy/`` with UMAP and t-SNE maps of train and test
      embeddings, ``discrepancy.json`` and ``test_only_patterns.csv``
      (:func:`dcloop.beyond.discrepancy.run_discrepancy`).

    Anything else: nothing happens and nothing heavy is imported.

    Args:
        cfg: the run's composed config (reads ``discrepancy``).
        run: the :class:`dcloop.train.Run` (data module, fold ensemble, sources).
        run_dir: the run directory.
    """
    run_dir = Path(run_dir)
    if getattr(run.dm, "source", None) == "coco":
        from dcloop.beyond.detection import write_coco_results
        from dcloop.results import issue_table

        write_coco_results(run_dir, run.dm, issue_table(run.model.samples, run.sources))
    if cfg.get("discrepancy"):
        from dcloop.beyond.discrepancy import run_discrepancy

        run_discrepancy(run.model, run.dm, run_dir / "discrepancy")


#: Fewest test samples the train/test discrepancy analysis works with.
MIN_TEST = 10


def check_before_run(cfg: Any, dm: Any) -> None:
    """Fail before training, not after it, when ``discrepancy=true`` cannot run.

    Raises:
        ValueError: the test split has fewer than :data:`MIN_TEST` samples.
    """
    if cfg.get("discrepancy"):
        n = len(getattr(dm, "test_dataset", None) or [])
        if n < MIN_TEST:
            raise ValueError(
                f"discrepancy=true compares train with test, but the test split has {n} "
                f"sample(s) (need >= {MIN_TEST}): raise data.test_frac or set discrepancy=false"
            )
