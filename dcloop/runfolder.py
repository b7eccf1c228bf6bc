"""The run folder of a ``dcloop`` command: one live run at a time, and no stale files.

Two runs writing into one folder corrupt each other's files (the CSV logger dies on the
other's ``metrics.csv``), and a run into a folder that holds an earlier run's files keeps
that run's ``relabel/``, ``annotators/`` and ``tensorboard/``, which the new report then
shows. So the command line takes a lock on the folder (released when the process ends,
however it ends) and refuses a folder that holds a run's files unless it continues that
run (``resume=``) or replaces it (``overwrite=true``).
"""

from __future__ import annotations

import fnmatch
import logging
import os
import shutil
from pathlib import Path
from typing import IO

from dcloop.errors import UserInputError, quote

log = logging.getLogger(__name__)

#: The lock file inside a run folder.
LOCK_NAME = ".dcloop.lock"

#: What Hydra and Lightning write into a run folder before dcloop starts (not a run's files).
_LAUNCHER_FILES = (".hydra", "*.log", LOCK_NAME, ".pl_hydra_rank_*", ".submitit")

#: Every file and folder a dcloop run writes (what ``overwrite=true`` may remove).
RUN_FILES = (
    "checkpoints",
    "logs",
    "tensorboard",
    "wandb",
    "mlruns",
    "mlflow.db",
    "lightning_logs",
    "relabel",
    "annotators",
    "model",
    "discrepancy",
    "data_issues",
    "flagged_boxes",
    "label_issues_coco.json",
    "report.html",
    "metrics.json",
    "config.yaml",
    "*.csv",
    "*.npy",
    "*.pt",
    "*.ckpt",
)

#: A folder holds a dcloop run when one of these is there.
_RUN_MARKERS = ("label_issues.csv", "metrics.json", "checkpoints", "sample_table.pt", "folds.npy")

_held: dict[Path, IO[str]] = {}


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def lock_run_folder(path: str | os.PathLike) -> None:
    """Hold an exclusive lock on ``path`` for the life of this process.

    Raises:
        UserInputError: another live process holds it.
    """
    import fcntl

    path = Path(path).resolve()
    if path in _held:
        return
    path.mkdir(parents=True, exist_ok=True)
    handle = open(path / LOCK_NAME, "a+")  # noqa: SIM115 - held open until the process ends
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        owner = handle.read().strip() or "?"
        handle.close()
        raise UserInputError(
            f"hydra.run.dir={quote(path)} is in use by another dcloop run (pid {owner}); "
            "expected a folder no live run writes to: wait for it, or choose another "
            "hydra.run.dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _held[path] = handle


def earlier_run_files(path: str | os.PathLike) -> list[str]:
    """Names in ``path`` other than what Hydra and Lightning write before the run (sorted)."""
    path = Path(path)
    if not path.is_dir():
        return []
    return sorted(p.name for p in path.iterdir() if not _matches(p.name, _LAUNCHER_FILES))


def check_run_folder(path: str | os.PathLike, *, resume=None, overwrite: bool = False) -> None:
    """Refuse a run folder that holds an earlier run's files, or clear them.

    Args:
        path: the run folder (``output_dir``).
        resume: the ``resume=`` checkpoint; a resumed run may continue in its own folder.
        overwrite: remove the earlier run's files first (only names a dcloop run writes, see
            :data:`RUN_FILES`; anything else there is refused, never deleted).

    Raises:
        UserInputError: the folder holds files and neither ``resume`` nor ``overwrite`` is
            given, or ``overwrite`` would have to remove files a run does not write.
    """
    if not isinstance(overwrite, bool):
        raise UserInputError(f"overwrite={quote(overwrite)}: expected true or false")
    found = earlier_run_files(path)
    if not found or resume:
        return
    shown = ", ".join(found[:6]) + (f", ... ({len(found)} entries)" if len(found) > 6 else "")
    if not overwrite:
        raise UserInputError(
            f"hydra.run.dir={quote(path)} is not empty ({shown}); expected a new folder: "
            "choose another hydra.run.dir, continue that run with resume=<its "
            "checkpoints/last.ckpt>, or replace its files with overwrite=true"
        )
    foreign = [name for name in found if not _matches(name, RUN_FILES)]
    if not set(found) & set(_RUN_MARKERS):
        foreign = foreign or found  # CSVs and arrays without a run beside them: not a run
    if foreign:
        raise UserInputError(
            f"overwrite=true removes only a dcloop run's files, and hydra.run.dir="
            f"{quote(path)} also holds {', '.join(foreign[:6])}; expected a run folder: "
            "choose another hydra.run.dir"
        )
    for name in found:
        target = Path(path) / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()
    log.warning("overwrite=true: removed the earlier run's %s from %s", shown, path)


def is_launched_rank() -> bool:
    """This process is a rank > 0 that a launcher started (DDP, SLURM): rank 0 took the
    lock and checked the folder for all of them."""
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        value = os.environ.get(key)
        if value not in (None, "", "0"):
            return True
    return False
