"""What ``dcloop-predict RUN INPUTS`` reads: files, folders, CSV / JSONL tables, manifests.

Each INPUT is

* a file of the model's kind (an image, a sound file, a ``.npy`` array; ``.txt`` for text);
* a folder: every such file under it, in sorted order (hidden ones skipped);
* a CSV or JSON-lines file: for a text model, a table of texts (column / key ``text``);
  for any other model, a manifest with a ``path`` column (paths relative to the
  manifest's folder, or absolute).

:func:`collect` lists them as :class:`Item` rows; nothing is read yet. Bad input raises
:class:`~dcloop.errors.UserInputError` naming the value and what was expected.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dcloop.data.text import JSONL_SUFFIXES, read_table
from dcloop.errors import UserInputError
from dcloop.kept.prepare import EXTENSIONS

TABLE_SUFFIXES = (".csv", *JSONL_SUFFIXES)
#: What a model of each preprocessing kind reads, for messages.
WHAT = {
    "image": "an image file",
    "array": "a .npy array file",
    "audio": "a sound file",
    "text": "a text file",
    "tensor": "a .npy array file",
}


@dataclass(frozen=True)
class Item:
    """One input: where it came from and how to read it (a file, a row of it, or a text)."""

    source: str
    path: str | None = None
    row: int | None = None
    text: str | None = None


def collect(inputs: str | os.PathLike | Sequence, kind: str, *, text_column: str = "text"):
    """The :class:`Item` rows of ``inputs`` for a model whose preprocessing is ``kind``.

    Raises:
        UserInputError: an input that does not exist, a folder with no file of the kind,
            a file of another kind, a table without the column, no input at all.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    items: list[Item] = []
    for raw in inputs:
        if not isinstance(raw, (str, os.PathLike)):
            raise UserInputError(f"INPUTS: {raw!r} is not a path; expected files or folders")
        p = Path(raw).expanduser()
        if p.is_dir():
            items += _folder(p, kind)
        elif p.is_file():
            items += _file(p, kind, text_column)
        else:
            raise UserInputError(f"INPUTS: {str(raw)!r} does not exist")
    if not items:
        raise UserInputError("INPUTS: nothing to predict (give files, a folder or a table)")
    return items


def _folder(p: Path, kind: str) -> list[Item]:
    exts = EXTENSIONS[kind]
    found = sorted(
        f
        for f in p.rglob("*")
        if f.is_file()
        and f.suffix.lower() in exts
        and not any(part.startswith(".") for part in f.relative_to(p).parts)
    )
    if not found:
        raise UserInputError(
            f"INPUTS: folder {str(p)!r} holds no input file of this model ({', '.join(exts)})"
        )
    out: list[Item] = []
    for f in found:
        out += _one(f, kind)
    return out


def _file(p: Path, kind: str, text_column: str) -> list[Item]:
    suffix = p.suffix.lower()
    if suffix in TABLE_SUFFIXES:
        if kind == "text":
            texts, _ = read_table(p, text_column, None)
            return [Item(f"{p}:row {i}", text=t) for i, t in enumerate(texts)]
        return _manifest(p, kind)
    if suffix not in EXTENSIONS[kind]:
        table = "a CSV/JSONL of texts" if kind == "text" else "a CSV/JSONL manifest (path column)"
        raise UserInputError(
            f"INPUTS: {str(p)!r} is not {WHAT[kind]} ({', '.join(EXTENSIONS[kind])}), "
            f"a folder or {table}"
        )
    return _one(p, kind)


def _one(f: Path, kind: str) -> list[Item]:
    if kind == "array":  # a stack (N, H, W) is N inputs
        try:
            arr = np.load(f, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as err:
            raise UserInputError(f"cannot read {str(f)!r} as a .npy array: {err}") from None
        if arr.ndim == 3:
            return [Item(f"{f}:row {i}", path=str(f), row=i) for i in range(arr.shape[0])]
    return [Item(str(f), path=str(f))]


def _manifest(p: Path, kind: str) -> list[Item]:
    paths, _ = read_table(p, "path", None)
    out: list[Item] = []
    for i, raw in enumerate(paths):
        f = Path(raw).expanduser()
        f = f if f.is_absolute() else p.parent / f
        if not f.is_file():
            raise UserInputError(f"{str(p)!r} row {i} (0-based): no such file {str(f)!r}")
        if f.suffix.lower() not in EXTENSIONS[kind]:
            raise UserInputError(
                f"{str(p)!r} row {i} (0-based): {str(f)!r} is not {WHAT[kind]} "
                f"({', '.join(EXTENSIONS[kind])})"
            )
        out += _one(f, kind)
    return out
