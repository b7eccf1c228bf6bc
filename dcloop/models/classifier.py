"""One network as an ordinary LightningModule: baselines, sequential folds, refits."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
from torch import nn

from dcloop._checks import check_callable
from dcloop.models import optim


class Classifier(L.LightningModule):
    """Train one network on ``(x, y, index)`` batches, optionally weighted per sample.

    The plain counterpart of :class:`~dcloop.models.FoldEnsemble`: use it as fold k
    of a sequential k-fold run (with :class:`~dcloop.callbacks.OOFCollector` on the
    held-out fold), as a no-cleaning baseline, or to refit on cleaned labels.

    Args:
        net: factory returning an ``nn.Module`` mapping ``(B, ...)`` to ``(B, C)``.
        num_classes: C.
        weights: ``(N,)`` per-sample loss weights keyed by index (``None`` = all 1).
        targets: ``(N, C)`` per-sample target distributions keyed by index, in place of the
            batch's labels (``None``: the labels). A student trains on them: relabelled or soft
            targets from the fold replicas' held-out evidence (:mod:`dcloop.student`).
        seed: seeds the network's initialisation.
        lr, weight_decay, scheduler, label_smoothing, optimizer, loss: as in ``FoldEnsemble``
            (any optimiser works here: there is one network).
    """

    def __init__(
        self,
        net: Callable[[], nn.Module],
        num_classes: int,
        *,
        weights=None,
        targets=None,
        seed: int = 0,
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        scheduler: str = "cosine",
        label_smoothing: float = 0.0,
        optimizer: Callable | None = None,
        loss: Callable | None = None,
    ) -> None:
        super().__init__()
        optim.check_scheduler(scheduler)
        check_callable("optimizer", optimizer, expected="a factory optimizer(params)")
        self._optimizer, self._scheduler = optimizer, scheduler
        self._loss_fn = optim.per_sample_loss(loss, label_smoothing)
        self.save_hyperparameters(
            {
                "num_classes": num_classes,
                "seed": seed,
                "lr": lr,
                "weight_decay": weight_decay,
                "scheduler": optim.describe(scheduler),
                "label_smoothing": label_smoothing,
                "optimizer": optim.describe(optimizer),
                "loss": optim.describe(loss),
            },
            ignore=[
                "net",
                "weights",
                "targets",
                "optimizer",
                "scheduler",
                "loss",
            ],  # (Lightning compares the dict with each init argument)
        )
        self.num_classes = int(num_classes)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.net = net()
        w = torch.as_tensor(weights, dtype=torch.float32) if weights is not None else None
        self.register_buffer("weights", w, persistent=w is not None)
        t = torch.as_tensor(targets, dtype=torch.float32) if targets is not None else None
        if t is not None and (t.ndim != 2 or t.shape[1] != self.num_classes):
            raise ValueError(
                f"targets must have shape (N, {self.num_classes}); got {tuple(t.shape)}"
            )
        self.register_buffer("targets", t, persistent=t is not None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def on_train_epoch_start(self) -> None:
        # Per-epoch seed, as FoldEnsemble: a resumed run draws the same randomness.
        torch.manual_seed(self.hparams.seed * 100_003 + self.current_epoch)

    def training_step(self, batch, batch_idx):
        x, y, index = batch
        ce = self._loss_fn(self(x), y if self.targets is None else self.targets[index])
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
        return optim.configure_optimizers(
            self.parameters(),
            optimizer=self._optimizer,
            scheduler=self._scheduler,
            lr=self.hparams.lr,
            weight_decay=self.hparams.weight_decay,
            trainer=self._trainer,
        )
