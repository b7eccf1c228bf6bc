"""The progress bar, numbering epochs as the log and ``metrics.json`` do (from 1)."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar


class EpochProgressBar(TQDMProgressBar):
    """Lightning's bar, with ``Epoch 1`` for the first epoch (Lightning counts from 0, the
    log lines, the history and ``label_issues.csv`` from 1)."""

    @classmethod
    def when(cls, enabled: bool) -> EpochProgressBar | None:
        """The bar if ``enabled`` (``trainer.enable_progress_bar``), else ``None``."""
        return cls() if enabled else None

    def on_train_epoch_start(self, trainer: L.Trainer, *args) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch + 1}")
