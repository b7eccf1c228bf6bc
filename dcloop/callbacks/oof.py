"""Out-of-fold softmax collection into a device-resident ``[N, C]`` buffer."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from dcloop._checks import check_batch
from dcloop.data.fold_batches import fold_grouped_loader
from dcloop.health.features import NoEmbedding
from dcloop.timing import timed

log = logging.getLogger(__name__)

#: ``mode`` of :class:`OOFCollector`: each sample's held-out replica only, or every replica.
OOF_MODES: tuple[str, ...] = ("held_out", "all")


def predict_context(trainer: L.Trainer):
    """The precision plugin's predict context (autocast under ``precision=16-mixed`` etc.)."""
    try:
        return trainer.precision_plugin.predict_step_context()
    except AttributeError:  # a bare trainer stand-in (tests): full precision
        return contextlib.nullcontext()


def _to_device(trainer: L.Trainer, pl_module: L.LightningModule, batch):
    """To the module's device through ``transfer_batch_to_device`` and ``on_after_batch_transfer``
    (the module's and the datamodule's), as Lightning's own loops move batches."""
    strategy = getattr(trainer, "strategy", None)
    if strategy is not None and getattr(strategy, "lightning_module", None) is pl_module:
        return strategy.batch_to_device(batch, pl_module.device, dataloader_idx=0)
    return pl_module.transfer_batch_to_device(batch, pl_module.device, 0)


def _batch_limit(trainer: L.Trainer) -> float:
    """Batches of the pass: all of them, or ``fast_dev_run``'s count."""
    fast = getattr(trainer, "fast_dev_run", False)
    if fast:
        return 1 if fast is True else int(fast)
    return float("inf")


def dedup_last(index: torch.Tensor, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep one row per index (padded distributed samplers repeat samples); on device."""
    order = torch.argsort(index, stable=True)
    index, probs = index[order], probs[order]
    keep = torch.ones_like(index, dtype=torch.bool)
    keep[1:] = index[1:] != index[:-1]
    return index[keep], probs[keep]


class OOFCollector(L.Callback):
    """After each training epoch, write each sample's out-of-fold softmax by index.

    The pass runs over an un-augmented loader of the training set in eval mode. With
    :class:`~dcloop.models.FoldEnsemble` and ``mode="held_out"`` its dataset is re-batched
    by fold (:class:`~dcloop.data.fold_batches.FoldBatchSampler`) and each batch runs
    through its held-out replica alone (``held_out_probs(x, k)``): 1/K of the work of
    ``mode="all"`` (every replica on every batch, one output kept: ``oof_probs``), the
    same matrix to float tolerance. It needs row ``i`` of the dataset to carry
    ``index == i`` (dcloop's datasets do); a device-side check read once per epoch falls
    back to ``mode="all"`` with a warning otherwise. With any other LightningModule
    (sequential mode) the probabilities are ``softmax(pl_module(x))``.

    Per batch nothing leaves the device; under DDP the ``(index, probs)`` pairs are
    gathered once at epoch end and the duplicates the padded samplers add (fold batches
    dealt out to the ranks, or a ``DistributedSampler``) are dropped.

    Args:
        num_samples: N, rows of the buffer (default: ``pl_module.num_samples``).
        num_classes: C (default: ``pl_module.num_classes``).
        dataloader: loader of ``(x, y, index)`` items to predict (default:
            ``trainer.datamodule.oof_dataloader()``).
        every_n_epochs: collect every n-th epoch (the last epoch always collects).
        require_full_coverage: raise if some row was never written (fold-parallel
            mode); sequential mode covers only its fold, so set it False there.
        dtype: of the buffer (``torch.float16`` halves memory at ImageNet scale).
        mode: ``"held_out"`` (each sample through its held-out replica only) or ``"all"``
            (every replica on every sample, one output kept: the slower reference path).
        keep_features: also keep each sample's held-out penultimate embedding in an
            ``[N, D]`` buffer (``features``), from the same forward pass, for data health
            (``held_out`` mode, one process, a module with ``held_out_outputs``); left off
            with a log line when the buffer would not fit (see :meth:`_features_fit`).

    Example:
        >>> oof = OOFCollector(num_samples=N, num_classes=C, dataloader=held_out_loader,
        ...                    require_full_coverage=False)  # doctest: +SKIP
        >>> L.Trainer(callbacks=[oof]).fit(my_module, train_loader)  # doctest: +SKIP
        >>> index, probs = oof.shard()  # doctest: +SKIP
    """

    def __init__(
        self,
        num_samples: int | None = None,
        num_classes: int | None = None,
        *,
        dataloader: DataLoader | None = None,
        every_n_epochs: int = 1,
        require_full_coverage: bool = True,
        dtype: torch.dtype = torch.float32,
        mode: str = "held_out",
        keep_features: bool = True,
    ) -> None:
        if mode not in OOF_MODES:
            raise ValueError(f"mode must be one of {list(OOF_MODES)}; got {mode!r}")
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1; got {every_n_epochs}")
        for name, v in (("num_samples", num_samples), ("num_classes", num_classes)):
            if v is not None and v < 1:
                raise ValueError(f"{name} must be a positive integer; got {v}")
        self.num_samples = num_samples
        self.num_classes = num_classes
        self.dataloader = dataloader
        self.every_n_epochs = every_n_epochs
        self.require_full_coverage = require_full_coverage
        self.dtype = dtype
        self.mode = mode
        self.probs: torch.Tensor | None = None
        self.seen: torch.Tensor | None = None
        self.last_epoch = -1
        self._grouped: tuple | None = None  # (dataset key, fold-grouped loader), built once
        self._pending: dict[str, Any] | None = None
        self._folds: np.ndarray | None = None  # host copy of the folds (fold-grouped batches)
        self._misrouted: torch.Tensor | None = None  # device flag of the last pass
        self.keep_features = bool(keep_features)
        self.features: torch.Tensor | None = None  # [N, D] held-out embeddings (data health)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(num_samples=self.num_samples, num_classes=self.num_classes)

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.num_samples is None:
            self.num_samples = int(getattr(pl_module, "num_samples", 0)) or None
        if self.num_classes is None:
            self.num_classes = int(getattr(pl_module, "num_classes", 0)) or None
        if self.num_samples is None or self.num_classes is None:
            raise ValueError(
                "OOFCollector needs num_samples and num_classes (pass them, or "
                "give the LightningModule `num_samples` / `num_classes`)"
            )
        self._allocate(pl_module.device)
        folds = getattr(getattr(pl_module, "samples", None), "folds", None)
        if self.mode == "held_out" and hasattr(pl_module, "held_out_probs") and folds is not None:
            self._folds = folds.detach().cpu().numpy()  # fixed at setup; read once

    def due(self, trainer: L.Trainer) -> bool:
        """Whether this epoch's pass is due by ``every_n_epochs`` (the last epoch always is)."""
        epoch = trainer.current_epoch
        last = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
        return not (epoch + 1) % self.every_n_epochs or last

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.due(trainer):
            self.ensure_collected(trainer, pl_module)

    def ensure_collected(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Run this epoch's pass unless it already ran: callers may come in any order (this
        callback's own hook, or a :class:`ConfidentLearning` that needs the buffer now)."""
        epoch = trainer.current_epoch
        if self.last_epoch == epoch:
            return
        with timed(trainer, "oof"):
            self.collect(trainer, pl_module)
            wrong = self._misrouted is not None and bool(self._misrouted)  # once per epoch
            if trainer.strategy.reduce_boolean_decision(wrong, all=False):
                log.warning(
                    "OOF loader rows do not carry index == row position, so fold-grouped "
                    "batches cannot pick the held-out replica; using mode='all' from now on"
                )
                self._folds = None
                self.collect(trainer, pl_module)
            if trainer.fast_dev_run:  # one batch was predicted: uniform rows for the rest, so
                self.probs[~self.seen] = 1.0 / self.num_classes  # the later steps can run
            elif self.require_full_coverage:
                self._check_coverage()
        self.last_epoch = epoch

    def state_dict(self) -> dict[str, Any]:
        if self.probs is None:
            return {"last_epoch": self.last_epoch}
        return {"probs": self.probs.cpu(), "seen": self.seen.cpu(), "last_epoch": self.last_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_epoch = state_dict.get("last_epoch", -1)
        self._pending = state_dict
        if self.probs is not None:
            self._allocate(self.probs.device)

    # ----------------------------------------------------------------- public
    def collect(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Run the OOF pass now and write the buffer (called at each epoch end).

        Nothing in the loop waits for the device: no ``.item()``, ``.cpu()`` or
        data-dependent shapes (``tests/test_gpu.py`` checks it with CUDA's sync debug mode).
        """
        self._allocate(pl_module.device)
        loader, batch_folds = self._loader(trainer)
        distributed = trainer.world_size > 1
        parts_i, parts_p = [], []
        was_training = pl_module.training
        pl_module.eval()
        self._misrouted = None
        limit = _batch_limit(trainer)
        try:  # as Lightning predicts: the precision plugin's context, the batch-transfer hooks
            with torch.inference_mode(), predict_context(trainer):
                for i, batch in enumerate(loader):
                    if i >= limit:
                        break
                    if i == 0:
                        check_batch(batch)
                    batch = _to_device(trainer, pl_module, batch)
                    index = batch[2].long()
                    if batch_folds is None:
                        probs = self._predict(pl_module, batch)
                    elif self._wants_features(pl_module, distributed) and (
                        outputs := self._held_out_outputs(pl_module, batch[0], batch_folds[i])
                    ):
                        probs, feats = outputs
                        self._write_features(index, feats)
                        self._note_routing(pl_module, index, batch_folds[i])
                    else:  # a batch of fold k: replica k alone, k read on the host
                        probs = pl_module.held_out_probs(batch[0], batch_folds[i])
                        self._note_routing(pl_module, index, batch_folds[i])
                    if distributed:
                        parts_i.append(index)
                        parts_p.append(probs)
                    else:
                        self.probs.index_copy_(0, index, probs.to(self.dtype))
                        self.seen.index_fill_(0, index, True)
        finally:
            pl_module.train(was_training)
        if distributed:
            self._write_gathered(pl_module, parts_i, parts_p)

    def shard(self) -> tuple[np.ndarray, np.ndarray]:
        """``(index (M,), probs (M, C))`` of the rows written so far, on the host."""
        rows = self.seen.nonzero().flatten()
        return rows.cpu().numpy(), self.probs[rows].float().cpu().numpy()

    def save_shard(self, path: str | Path) -> Path:
        """Write :meth:`shard` to an ``.npz`` with arrays ``index`` and ``probs``."""
        index, probs = self.shard()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, index=index, probs=probs)
        return path

    # ---------------------------------------------------------------- private
    def _allocate(self, device: torch.device) -> None:
        if self.probs is None or self.probs.device != device:
            shape = (self.num_samples, self.num_classes)
            if self.probs is None:
                self.probs = torch.zeros(shape, dtype=self.dtype, device=device)
                self.seen = torch.zeros(self.num_samples, dtype=torch.bool, device=device)
            else:
                self.probs, self.seen = self.probs.to(device), self.seen.to(device)
        if self._pending is not None and "probs" in self._pending:
            self.probs.copy_(self._pending["probs"])
            self.seen.copy_(self._pending["seen"])
        self._pending = None

    # ------------------------------------------------- held-out embeddings (data health)
    def _held_out_outputs(self, pl_module, x, fold: int):
        """``held_out_outputs(x, fold)``, or ``None`` (embeddings off for the run, with a log
        line) for a network that offers no embedding: its probabilities still come."""
        try:
            return pl_module.held_out_outputs(x, fold)
        except NoEmbedding as err:
            log.warning("no held-out embeddings (data health skips them): %s", err)
            self.keep_features = False
            return None

    def _wants_features(self, pl_module, distributed: bool) -> bool:
        return (
            self.keep_features
            and not distributed
            and callable(getattr(pl_module, "held_out_outputs", None))
        )

    def _features_fit(self, dim: int, device: torch.device) -> bool:
        """Whether an ``[N, dim]`` float32 buffer fits: a quarter of the free device memory
        on an accelerator, an eighth of the available RAM on the host."""
        need = self.num_samples * dim * 4
        if device.type == "cuda":
            free = torch.cuda.mem_get_info(device)[0] // 4
        else:
            try:
                free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 8
            except (ValueError, OSError, AttributeError):
                free = 1 << 30
        if need > free:
            log.info(
                "held-out embeddings [%d, %d] need %d MB: not kept",
                self.num_samples,
                dim,
                need >> 20,
            )
            self.keep_features = False
        return need <= free

    def _write_features(self, index: torch.Tensor, feats: torch.Tensor) -> None:
        if self.features is None or self.features.device != feats.device:
            if not self._features_fit(feats.shape[1], feats.device):
                return
            self.features = torch.zeros(
                self.num_samples, feats.shape[1], dtype=torch.float32, device=feats.device
            )
        if feats.shape[1] != self.features.shape[1]:
            raise ValueError(
                f"the network's features changed width from {self.features.shape[1]} to "
                f"{feats.shape[1]} between batches; expected one (B, D) embedding"
            )
        self.features.index_copy_(0, index, feats.to(torch.float32))

    def _note_routing(self, pl_module, index: torch.Tensor, fold: int) -> None:
        """Accumulate, on the device, whether some row of the batch is not of ``fold``."""
        wrong = (pl_module.samples.folds[index] != fold).any()
        self._misrouted = wrong if self._misrouted is None else self._misrouted | wrong

    def _loader(self, trainer: L.Trainer) -> tuple[DataLoader, list[int] | None]:
        """The pass's loader, and the fold of each of its batches (``None``: any folds)."""
        loader = self.dataloader
        if loader is None:
            dm = trainer.datamodule
            if dm is None or not hasattr(dm, "oof_dataloader"):
                raise ValueError(
                    "OOFCollector needs a dataloader: pass `dataloader=` or use "
                    "a datamodule with an `oof_dataloader()` method"
                )
            loader = dm.oof_dataloader()
        grouped = None
        if self._folds is not None:
            key = (id(loader.dataset), trainer.world_size, trainer.global_rank)
            cached = self._grouped
            if cached is not None and cached[0] == key:  # one loader (and its workers) per run
                grouped = cached[1]
            else:
                grouped = fold_grouped_loader(
                    loader, self._folds, num_replicas=trainer.world_size, rank=trainer.global_rank
                )
                self._grouped = (key, grouped)
        if grouped is not None:
            return grouped, grouped.batch_sampler.batch_folds
        if trainer.world_size > 1:
            sampler = DistributedSampler(
                loader.dataset,
                num_replicas=trainer.world_size,
                rank=trainer.global_rank,
                shuffle=False,
            )
            loader = DataLoader(
                loader.dataset,
                batch_size=loader.batch_size,
                sampler=sampler,
                num_workers=loader.num_workers,
                collate_fn=loader.collate_fn,
            )
        return loader, None

    @staticmethod
    def _predict(pl_module: L.LightningModule, batch) -> torch.Tensor:
        x, _, index = batch
        if hasattr(pl_module, "oof_probs"):
            return pl_module.oof_probs(x, index)
        return pl_module(x).float().softmax(-1)

    def _write_gathered(self, pl_module, parts_i, parts_p) -> None:
        index = (
            torch.cat(parts_i)
            if parts_i
            else torch.empty(0, dtype=torch.long, device=pl_module.device)
        )
        probs = (
            torch.cat(parts_p)
            if parts_p
            else torch.empty(0, self.num_classes, device=pl_module.device)
        )
        # Every rank holds the same number of rows (the sampler pads), so shapes match.
        index = pl_module.all_gather(index).reshape(-1)
        probs = pl_module.all_gather(probs).reshape(-1, self.num_classes)
        index, probs = dedup_last(index, probs)
        self.probs.index_copy_(0, index, probs.to(self.dtype))
        self.seen.index_fill_(0, index, True)

    def _check_coverage(self) -> None:
        missing = (~self.seen).nonzero().flatten()
        if missing.numel():
            raise RuntimeError(
                f"OOF pass left {missing.numel()} of {self.num_samples} rows unwritten (e.g. "
                f"indices {missing[:5].tolist()}): the OOF loader must cover every training "
                "index exactly once"
            )
