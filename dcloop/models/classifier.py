"""One network as an ordinary LightningModule: baselines, sequential folds, refits."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
from torch import nn

from dcloop import mixup as mixing
from dcloop._checks import check_callable
from dcloop.errors import UserInputError
from dcloop.models import optim
from dcloop.models.coguess import CoGuess
from dcloop.models.elr import EarlyLearning, reconcile_checkpoint
from dcloop.models.elr import check_options as check_elr
from dcloop.models.losses import check_soft_loss


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
        mixup: ``alpha`` of mixup (:mod:`dcloop.mixup`; 0: off): each batch is mixed with a
            permutation of itself, ``lam ~ Beta(alpha, alpha)``, inputs, targets and weights
            alike (token ids: at the network's ``embed``); the loss then takes soft targets.
            The draws come from a generator seeded per epoch, as the network's randomness.
        elr: ``{"lam": ..., "beta": ...}``: early-learning regularisation
            (:mod:`dcloop.models.elr`); ``None``: off. Not with ``mixup``.
        num_samples: N, the training set's size, for ``elr``'s running targets (default: the
            length of ``targets`` or ``weights``).
        coguess: a student's left-out samples as unlabelled data
            (:class:`~dcloop.models.coguess.CoGuess`); ``None``: off. Not with ``mixup``.
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
        mixup: float = 0.0,
        elr: Mapping[str, float] | None = None,
        num_samples: int | None = None,
        coguess: CoGuess | None = None,
    ) -> None:
        super().__init__()
        elr = check_elr(elr)
        optim.check_scheduler(scheduler)
        check_callable("optimizer", optimizer, expected="a factory optimizer(params)")
        self._optimizer, self._scheduler = optimizer, scheduler
        self._loss_fn = optim.per_sample_loss(loss, label_smoothing)
        mixup = mixing.check_alpha(mixup)
        if mixup:
            check_soft_loss(self._loss_fn, int(num_classes))
        self._mix_generator: torch.Generator | None = None
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
                "mixup": mixup,
                "elr": elr,
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
        self.elr = None
        if elr is not None:
            if mixup:
                raise UserInputError(
                    "model.elr and mixup cannot be combined (a mixed row has no single "
                    "running target): set one of them off"
                )
            n = next((len(v) for v in (t, w) if v is not None), num_samples)
            if n is None:
                raise ValueError("Classifier(elr=...) needs num_samples, targets or weights")
            self.elr = EarlyLearning(int(n), self.num_classes, **elr)
        if coguess is not None and mixup:
            raise UserInputError(
                "student.unlabelled and mixup cannot be combined (a mixed row has no single "
                "guess): set student.mixup=0 or student.unlabelled=0"
            )
        self.coguess = coguess
        self._view_generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        reconcile_checkpoint(self.elr, checkpoint.get("state_dict", {}), "the checkpoint")

    def on_fit_start(self) -> None:
        # A batch that cannot be mixed (token ids, no embedding hook): fail before any step.
        dm = getattr(self.trainer, "datamodule", None)
        if self.hparams.mixup and getattr(dm, "train_dataset", None) is not None:
            mixing.mix_point(self.net, dm.train_dataset[0][0])

    def on_train_epoch_start(self) -> None:
        # Per-epoch seed, as FoldEnsemble: a resumed run draws the same randomness.
        torch.manual_seed(self.hparams.seed * 100_003 + self.current_epoch)
        self._mix_generator = self._epoch_generator()
        self._view_generator = self._epoch_generator(offset=2)

    def _epoch_generator(self, offset: int = 1) -> torch.Generator:
        """Mixup's (or the unlabelled view's) own stream (CPU), seeded per epoch: apart from
        the network's dropout."""
        seed = (self.hparams.seed * 100_003 + self.current_epoch) * 2 + offset  # 1 or 2
        return torch.Generator().manual_seed(seed)

    def _progress(self, batch_idx: int) -> float:
        """The share of this fit's epochs done at ``batch_idx`` (0 without a trainer)."""
        trainer = self._trainer
        if trainer is None or not trainer.max_epochs or trainer.max_epochs < 1:
            return 0.0
        batches = trainer.num_training_batches
        within = batch_idx / batches if batches and batches != float("inf") else 0.0
        return (self.current_epoch + within) / trainer.max_epochs

    def training_step(self, batch, batch_idx):
        x, y, index = batch
        t = y if self.targets is None else self.targets[index]
        w = None if self.weights is None else self.weights[index]
        if self.hparams.mixup:
            logits, t, w = self._mixed_forward(x, t, w)
        else:
            logits = self(x)
        ce = self._loss_fn(logits, t)
        if self.elr is not None:
            ce = ce + self.elr.penalty(logits, index, train=None if w is None else w > 0)
        if w is None:
            loss = ce.mean()
        else:
            loss = (w * ce).sum() / w.sum().clamp_min(1e-8)
        if self.coguess is not None:
            loss = loss + self.coguess.loss(
                self.net, x, logits, index, self._progress(batch_idx), self._view_generator
            )
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=x.shape[0])
        return loss

    def _mixed_forward(self, x, targets, weights):
        """Logits, targets and weights of the mixed batch (:mod:`dcloop.mixup`)."""
        if self._mix_generator is None:
            self._mix_generator = self._epoch_generator()
        where = mixing.mix_point(self.net, x[:1])
        lam, perm = mixing.draw(
            x.shape[0],
            self.hparams.mixup,
            weights=weights,
            generator=self._mix_generator,
            device=x.device,
        )
        t = mixing.as_distribution(targets, self.num_classes)
        if where == "input":
            x, t, weights = mixing.mix(x, t, weights, lam, perm)
            return self(x), t, weights
        z, t, weights = mixing.mix(self.net.embed(x), t, weights, lam, perm)
        return self.net.classify(z), t, weights

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
