"""The Hydra command line: a thin wrapper over :func:`dcloop.train.train`."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import hydra
from omegaconf import DictConfig

CONFIG_DIR = str(Path(__file__).resolve().parent / "conf")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def _app(cfg: DictConfig) -> float:
    from dcloop.train import train

    metrics = train(cfg)
    return float(metrics["test"]["accuracy"])  # the value Hydra sweepers optimise


def main() -> None:
    """Entry point of the ``dcloop`` console script and ``python -m dcloop``."""
    # Lightning 2.6 on torch 2.14 warns about its own pytree use on every batch.
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    # ... and advertises a cloud logger at every Trainer start: not what the console is for.
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "litlogger" not in record.getMessage()
    )
    _app()
