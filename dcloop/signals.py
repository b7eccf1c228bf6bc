"""SIGTERM and Ctrl+C during fit: exit non-zero and name the checkpoint to resume from.

Lightning turns SIGTERM into ``SIGTERMException`` (a ``SystemExit`` with code 0) at the
next batch or epoch boundary, and Ctrl+C into ``sys.exit(1)``. A batch scheduler reads
exit 0 as success, so :func:`exit_on_signal` turns both into ``128 + signum`` (143 for
SIGTERM, 130 for SIGINT) after logging where the resumable checkpoint is.

The resumable checkpoint is the one :class:`~dcloop.callbacks.EpochCheckpoint` wrote at
the end of the last finished epoch (atomically, so an interrupted write never replaces
it); the interrupted epoch is trained again on resume. Resuming from the middle of an
epoch would not give the flags of an uninterrupted run, so nothing is saved there.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

from dcloop.callbacks.checkpoint import EpochCheckpoint

log = logging.getLogger(__name__)


@contextmanager
def exit_on_signal(trainer: L.Trainer) -> Iterator[None]:
    """Around ``trainer.fit``: a SIGTERM or Ctrl+C exits with ``128 + signum``.

    Example:
        >>> with exit_on_signal(trainer):  # doctest: +SKIP
        ...     trainer.fit(model, datamodule=dm, ckpt_path=resume)

    Raises:
        SystemExit: 143 after SIGTERM, 130 after SIGINT (Ctrl+C).
    """
    try:
        yield
    except SIGTERMException:
        _stop(trainer, signal.SIGTERM)
    except SystemExit as err:
        # Lightning answers Ctrl+C with sys.exit(1) inside its `except KeyboardInterrupt`.
        if not isinstance(err.__context__, KeyboardInterrupt):
            raise
        _stop(trainer, signal.SIGINT)


def resumable_checkpoint(trainer: L.Trainer) -> Path | None:
    """The checkpoint a stopped run continues from: the last epoch end this run wrote,
    else the checkpoint it was itself resumed from, else ``None``."""
    for cb in trainer.callbacks:
        if isinstance(cb, EpochCheckpoint) and cb.saved_epoch >= 0 and cb.path.is_file():
            return cb.path.resolve()
    resumed = trainer.ckpt_path
    if resumed and Path(resumed).is_file():
        return Path(resumed).resolve()
    return None


def stop_message(trainer: L.Trainer, signum: int) -> str:
    """What :func:`exit_on_signal` logs: the signal, the checkpoint, the override."""
    name = signal.Signals(signum).name
    path = resumable_checkpoint(trainer)
    if path is None:
        why = "checkpoint=false" if trainer.checkpoint_callback is None else "no epoch finished"
        return (
            f"dcloop: stopped by {name}; no checkpoint to resume from ({why}): "
            "run it again from the start"
        )
    return (
        f"dcloop: stopped by {name}; resumable checkpoint: {path}\n"
        f"  continue with the same overrides plus: resume={path}"
    )


def _stop(trainer: L.Trainer, signum: int) -> None:
    if trainer.is_global_zero:
        log.warning(stop_message(trainer, signum))
    raise SystemExit(128 + int(signum)) from None
