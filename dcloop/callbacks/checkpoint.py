"""``last.ckpt`` at the end of every training epoch, written atomically."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any
from weakref import proxy

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn

from dcloop.timing import timed

log = logging.getLogger(__name__)


class EpochCheckpoint(ModelCheckpoint):
    """Saves ``<dirpath>/last.ckpt`` at the end of every training epoch, atomically.

    Lightning's ``ModelCheckpoint(save_top_k=0, save_last=True)`` writes ``last.ckpt``
    only when fit ends, so a killed run has nothing to resume from. This callback
    writes it after every training epoch instead.

    Lightning moves checkpoint callbacks behind all others and calls them after the
    module's own ``on_train_epoch_end``, so the file holds the state *after* the
    epoch's OOF pass and confident-learning step (the weights the next epoch trains
    with). A run resumed from it (``resume=<path>``) continues with the next epoch
    and, with the same config, ends with the same flags and metrics as a run that was
    never interrupted.

    The checkpoint is written to ``last.ckpt.tmp``, flushed to disk and renamed over
    ``last.ckpt`` (``os.replace``), so a kill or a full disk leaves the previous
    ``last.ckpt`` whole. Local folders only (``dirpath`` is a path, not a URL).

    Writing costs time (a ``resnet18`` with K=5 replicas is a 671 MB file, about a third of
    a short run when written every epoch), timed as ``checkpoint`` in ``metrics.json``. So
    an epoch's end is skipped while the last write took more than ``max_share`` of the
    training time since it: with 0.1 (the ``dcloop`` command's default,
    ``conf/callbacks/default.yaml``) checkpoints cost at most about 10 % of the run and
    small models are still saved every epoch. The last epoch is always saved.

    Args:
        dirpath: folder of ``last.ckpt`` (created when the first epoch ends).
        every_epochs: save at most every this many epochs.
        max_share: the most of the training time the writes may take, in (0, 1]; 1 (the
            default here) saves every ``every_epochs`` epochs whatever it costs.

    Example:
        >>> ckpt = EpochCheckpoint("runs/a/checkpoints")  # doctest: +SKIP
        >>> L.Trainer(callbacks=[OOFCollector(), ConfidentLearning(), ckpt])  # doctest: +SKIP
    """

    FILE_NAME = "last.ckpt"

    def __init__(
        self, dirpath: str | Path, *, every_epochs: int = 1, max_share: float = 1.0
    ) -> None:
        if not str(dirpath):
            raise ValueError("dirpath must be a folder; got an empty path")
        if isinstance(every_epochs, bool) or not isinstance(every_epochs, int):
            raise ValueError(f"every_epochs must be an integer >= 1; got {every_epochs!r}")
        if every_epochs < 1:
            raise ValueError(f"every_epochs must be an integer >= 1; got {every_epochs}")
        if isinstance(max_share, bool) or not isinstance(max_share, (int, float)):
            raise ValueError(f"max_share must be a number in (0, 1]; got {max_share!r}")
        if not 0 < max_share <= 1:
            raise ValueError(f"max_share must be in (0, 1]; got {max_share}")
        self.save_every, self.max_share = every_epochs, float(max_share)
        self.write_seconds = 0.0  # how long the last write took
        self._since: float | None = None  # when the last write ended (or fit started)
        super().__init__(
            dirpath=str(dirpath),
            save_top_k=0,
            save_last=False,
            save_on_train_epoch_end=True,
            enable_version_counter=False,
        )
        self.saved_epoch = -1  # last (0-based) epoch whose end this process wrote

    @classmethod
    def when(cls, enabled: bool, dirpath: str | Path, **options: Any) -> EpochCheckpoint | None:
        """The callback if ``enabled`` (the top-level ``checkpoint`` switch), else ``None``."""
        return cls(dirpath, **options) if enabled else None

    @property
    def path(self) -> Path:
        """``<dirpath>/last.ckpt``."""
        return Path(self.dirpath) / self.FILE_NAME

    # ------------------------------------------------------------------ hooks
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.fast_dev_run or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        if not self._due(trainer):
            return
        with timed(trainer, "checkpoint"):
            start = time.perf_counter()
            self.save(trainer)
            self.write_seconds = time.perf_counter() - start
        self._since = time.perf_counter()
        self.saved_epoch = trainer.current_epoch

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._since = time.perf_counter()

    def _due(self, trainer: L.Trainer) -> bool:
        """Save at this epoch's end? (the same answer on every rank: rank 0's clock decides)"""
        epoch = trainer.current_epoch
        last = epoch + 1 >= (trainer.max_epochs or 0) > 0 or trainer.should_stop
        done = epoch - self.saved_epoch >= self.save_every
        since = max(0.0, time.perf_counter() - (self._since or time.perf_counter()))
        cheap = self.max_share >= 1 or self.write_seconds <= self.max_share * since
        return bool(trainer.strategy.broadcast(last or (done and cheap)))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Nothing: the checkpoint is written at the end of the training epoch only."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Nothing: the last epoch's end already wrote the checkpoint."""

    def state_dict(self) -> dict[str, Any]:
        return {"saved_epoch": self.saved_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to restore: a resumed run writes into its own ``dirpath``."""

    # ----------------------------------------------------------------- public
    def save(self, trainer: L.Trainer) -> Path:
        """Write ``last.ckpt`` now (every rank calls this; rank 0 writes).

        Raises:
            OSError: naming the file when it cannot be written; ``last.ckpt`` is then
                unchanged.
        """
        path = self.path
        tmp = path.with_name(path.name + ".tmp")
        if trainer.is_global_zero:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.last_model_path = str(path)  # part of the saved state, so set first
        try:
            trainer.save_checkpoint(tmp, weights_only=False)  # the strategy writes on rank 0
            if trainer.is_global_zero:
                _fsync(tmp)
                os.replace(tmp, path)
                _fsync(path.parent)
        except OSError as err:
            _discard(tmp, trainer)
            raise OSError(
                err.errno,
                f"could not write the checkpoint {path} ({err.strerror or err}); "
                "the previous one, if any, is unchanged",
            ) from err
        except BaseException:
            _discard(tmp, trainer)
            raise
        trainer.strategy.barrier("dcloop_checkpoint")
        self._last_global_step_saved = trainer.global_step
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))
        return path


def _discard(tmp: Path, trainer: L.Trainer) -> None:
    if trainer.is_global_zero:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    """Flush a file (or a folder's entries) to disk; best effort on folders."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        if path.is_dir():  # some platforms cannot open folders
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not path.is_dir():
            raise
    finally:
        os.close(fd)
