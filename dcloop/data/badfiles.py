"""Decode-check of file datasets at setup: a corrupt file fails early, or is skipped and listed."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd

from dcloop.data._validation import preview
from dcloop.results import write_csv

logger = logging.getLogger(__name__)

#: ``on_bad_file`` values.
ON_BAD_FILE: tuple[str, ...] = ("error", "skip")


def check_on_bad_file(value: str) -> str:
    """Validate an ``on_bad_file`` option."""
    if value not in ON_BAD_FILE:
        raise ValueError(f"on_bad_file must be one of {list(ON_BAD_FILE)}; got {value!r}")
    return value


def check_files(dataset, on_bad_file: str = "error"):
    """Decode every item of a file dataset once; fail on or drop the unreadable ones.

    Args:
        dataset: a dataset with ``paths``, ``subset(indices)`` and ``__getitem__`` that raises
            ``OSError``/``ValueError`` for a file it cannot decode (``ImageFileDataset``,
            :class:`~dcloop.data.audio.AudioFileDataset`).
        on_bad_file: ``"error"``: raise, naming the files; ``"skip"``: leave them out.

    Returns:
        ``(dataset, skipped)``: the dataset without the bad rows (the same object when all are
        readable) and a list of ``(path, reason)``.

    Raises:
        ValueError: with ``on_bad_file="error"`` if any file cannot be read; names up to five
            of them and the count.
    """
    check_on_bad_file(on_bad_file)
    skipped: list[tuple[str, str]] = []
    good: list[int] = []
    for i in range(len(dataset)):
        try:
            dataset[i]
        except (OSError, ValueError, RuntimeError) as err:
            skipped.append((dataset.paths[i], f"{type(err).__name__}: {err}"))
        else:
            good.append(i)
    if not skipped:
        return dataset, skipped
    if on_bad_file == "error":
        raise ValueError(
            f"{len(skipped)} file(s) cannot be read: {preview([p for p, _ in skipped])} "
            f"(first error: {skipped[0][1]}). Fix or remove them, or set on_bad_file=skip "
            "to leave them out (they are then listed in skipped_files.csv)."
        )
    if not good:
        raise ValueError(f"none of the {len(dataset)} files can be read, e.g. {skipped[0][0]}")
    logger.warning("skipping %d unreadable file(s), e.g. %s", len(skipped), skipped[0][0])
    return dataset.subset(good), skipped


def write_skipped(skipped: list[tuple[str, str]], directory: str | os.PathLike) -> Path | None:
    """Write ``skipped_files.csv`` (columns ``path,reason``) into ``directory``; None if empty."""
    if not skipped:
        return None
    df = pd.DataFrame(skipped, columns=["path", "reason"])
    return write_csv(df, Path(directory) / "skipped_files.csv")
