"""``last.ckpt`` at the end of every training epoch, written atomically."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any
from weakref import proxy

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn

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

    Args:
        dirpath: folder of ``last.ckpt`` (created when the first epoch ends).

    Example:
        >>> ckpt = EpochCheckpoint("runs/a/checkpoints")  # doctest: +SKIP
        >>> L.Trainer(callbacks=[OOFCollector(), ConfidentLearning(), ckpt])  # doctest: +SKIP
    """

    FILE_NAME = "last.ckpt"

    def __init__(self, dirpath: str | Path) -> None:
        if not str(dirpath):
            raise ValueError("dirpath must be a folder; got an empty path")
        super().__init__(
            dirpath=str(dirpath),
            save_top_k=0,
            save_last=False,
            save_on_train_epoch_end=True,
            enable_version_counter=False,
        )
        self.saved_epoch = -1  # last (0-based) epoch whose end this process wrote

    @classmethod
    def when(cls, enabled: bool, dirpath: str | Path) -> EpochCheckpoint | None:
        """The callback if ``enabled`` (the top-level ``checkpoint`` switch), else ``None``."""
        return cls(dirpath) if enabled else None

    @property
    def path(self) -> Path:
        """``<dirpath>/last.ckpt``."""
        return Path(self.dirpath) / self.FILE_NAME

    # ------------------------------------------------------------------ hooks
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.fast_dev_run or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        self.save(trainer)
        self.saved_epoch = trainer.current_epoch

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
