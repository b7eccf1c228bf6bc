"""Decode-check of file datasets at setup: a corrupt file fails early, or is skipped and listed."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd

from dcloop._checks import preview
from dcloop.results import write_csv

logger = logging.getLogger(__name__)

#: ``on_bad_file`` values.
ON_BAD_FILE: tuple[str, ...] = ("error", "skip")


def check_on_bad_file(value: str) -> str:
    """Validate an ``on_bad_file`` option."""
    if value not in ON_BAD_FILE:
        raise ValueError(f"on_bad_file must be one of {list(ON_BAD_FILE)}; got {value!r}")
    return value


def bad_files_error(skipped: list[tuple[str, str]], total: int, on_bad_file: str) -> ValueError:
    """The error for unreadable files: up to five named, the count and the first reason."""
    if on_bad_file == "skip":
        return ValueError(f"none of the {total} files can be read, e.g. {skipped[0][0]}")
    return ValueError(
        f"{len(skipped)} file(s) cannot be read: {preview([p for p, _ in skipped])} "
        f"(first error: {skipped[0][1]}). Fix or remove them, or set on_bad_file=skip "
        "to leave them out (they are then listed in skipped_files.csv)."
    )


#: The list of files ``on_bad_file=skip`` left out, in the run folder (``metrics.json``'s
#: ``data.skipped_files_list``).
SKIPPED_FILES_CSV = "skipped_files.csv"


def write_skipped(skipped: list[tuple[str, str]], directory: str | os.PathLike) -> Path | None:
    """Write ``skipped_files.csv`` (columns ``path,reason``) into ``directory``; None if empty."""
    if not skipped:
        return None
    df = pd.DataFrame(skipped, columns=["path", "reason"])
    return write_csv(df, Path(directory) / SKIPPED_FILES_CSV)
