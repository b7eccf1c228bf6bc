"""One network as an ordinary LightningModule: baselines, sequential folds, refits."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from dcloop.models.optim import adamw_cosine


class Classifier(L.LightningModule):
    """Train one network on ``(x, y, index)`` batches, optionally weighted per sample.

    The plain counterpart of :class:`~dcloop.models.FoldEnsemble`: use it as fold k
    of a sequential k-fold run (with :class:`~dcloop.callbacks.OOFCollector` on the
    held-out fold), as a no-cleaning baseline, or to refit on cleaned labels.

    Args:
        net: factory returning an ``nn.Module`` mapping ``(B, ...)`` to ``(B, C)``.
        num_classes: C.
        weights: ``(N,)`` per-sample loss weights keyed by index (``None`` = all 1).
        seed: seeds the network's initialisation.
        lr, weight_decay, scheduler, label_smoothing: as in ``FoldEnsemble``.
    """

    def __init__(
        self,
        net: Callable[[], nn.Module],
        num_classes: int,
        *,
        weights=None,
        seed: int = 0,
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        scheduler: str = "cosine",
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if scheduler not in ("cosine", "none"):
            raise ValueError(f"scheduler must be 'cosine' or 'none'; got {scheduler!r}")
        self.save_hyperparameters(ignore=["net", "weights"])
        self.num_classes = int(num_classes)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.net = net()
        w = torch.as_tensor(weights, dtype=torch.float32) if weights is not None else None
        self.register_buffer("weights", w, persistent=w is not None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y, index = batch
        ce = F.cross_entropy(
            self(x), y, reduction="none", label_smoothing=self.hparams.label_smoothing
        )
        if self.weights is None:
            loss = ce.mean()
        else:
            w = self.weights[index]
            loss = (w * ce).sum() / w.sum().clamp_min(1e-8)
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=x.shape[0])
        return loss

    def _eval_step(self, batch, stage: str) -> None:
        x, y, _ = batch
        acc = (self(x).argmax(-1) == y).float().mean()
        self.log(f"{stage}/acc", acc, prog_bar=True, on_epoch=True, batch_size=x.shape[0])

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x).float().softmax(-1)

    def configure_optimizers(self):
        h = self.hparams
        return adamw_cosine(
            self.parameters(),
            lr=h.lr,
            weight_decay=h.weight_decay,
            scheduler=h.scheduler,
            max_epochs=self.trainer.max_epochs,
        )
