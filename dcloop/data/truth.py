"""True labels beside the given ones: ``data.source.truth_manifest``, read once at load.

With real label noise (people's labels, e.g. CIFAR-10N) nothing is injected (``noise=none``)
and the truth is a second CSV, ``path,label``, listing the same files as the data with their
true label. The data module then scores detection (precision, recall, F1) and the noise
estimate against it, as with injected noise.

Rows are named as a person sees them in an editor: 1-based, the header being row 1.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from dcloop._checks import parse_class_labels, preview
from dcloop.data.noise import NoiseResult, empirical_noise_matrix
from dcloop.errors import UserInputError

#: Columns of a truth manifest.
TRUTH_COLUMNS: tuple[str, ...] = ("path", "label")


def _key(path: str) -> str:
    return os.path.normcase(os.path.normpath(path))


def _resolve(manifest: str | os.PathLike, root: str | os.PathLike) -> Path:
    path = Path(manifest).expanduser()
    base = Path(root).expanduser()
    if not path.is_file() and not path.is_absolute() and (base / path).is_file():
        path = base / path
    if not path.is_file():
        raise FileNotFoundError(
            f"truth manifest not found: {str(Path(manifest))!r} (also looked in {str(base)!r}); "
            "expected a CSV with columns path,label: the true label of every file of the data"
        )
    return path


def _read(path: Path, kind: str = "truth manifest") -> tuple[list[str], list[str]]:
    what = f"{kind} {str(path)!r}"
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError as err:
        raise UserInputError(f"{what} is empty; expected columns path,label") from err
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserInputError(
            f"{what} is not a readable CSV ({first}); expected UTF-8 text with columns path,label"
        ) from err
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in TRUTH_COLUMNS if c not in df.columns]
    if missing:
        raise UserInputError(
            f"{what} lacks column(s) {missing}; expected columns path,label, found "
            f"{list(df.columns)}"
        )
    return [p.strip() for p in df["path"]], [lab.strip() for lab in df["label"]]


def _first_bad_label(raw: Sequence[str], class_names: Sequence[str], what: str) -> int | None:
    """The first row (0-based) whose label the one label rule rejects, or ``None``."""
    try:
        parse_class_labels(raw, class_names, where=what)
        return None
    except UserInputError:
        for i, value in enumerate(raw):
            try:
                parse_class_labels([value], class_names, where=what)
            except UserInputError:
                return i
        raise


def read_truth_manifest(
    manifest: str | os.PathLike,
    root: str | os.PathLike,
    paths: Sequence[str],
    class_names: Sequence[str],
    *,
    listed_in: str | os.PathLike | None = None,
) -> dict[str, int]:
    """The true class id of every file of the data, checked against the data's file list.

    Args:
        manifest: CSV with columns ``path,label``; paths relative to ``root`` (absolute paths
            as they are); a relative ``manifest`` not found as given is looked up in ``root``.
        root: the folder the data's paths are relative to.
        paths: ``(N,)`` the data's files (as its dataset's ``sources``), in listing order.
        class_names: the data's C class names; labels are names or ids (one label rule).
        listed_in: the data's own manifest, when ``paths[i]`` is its data row ``i``: a file
            the truth lacks is then named with its row there.

    Returns:
        ``{normalised path: true class id}`` for every file of ``paths``.

    Raises:
        FileNotFoundError: the truth manifest does not exist.
        UserInputError: naming the file and its first offending row (1-based, header counted):
            an empty path or label, a path the data does not list, a label that is not a
            class of the data, a path listed twice with two labels; or the first file of the
            data that the truth does not list.
    """
    path = _resolve(manifest, root)
    what = f"truth manifest {str(path)!r}"
    base = Path(root).expanduser()
    rel, raw = _read(path)
    if not rel:
        raise UserInputError(f"{what} has no rows; expected one row per file of the data")
    data = {_key(p): i for i, p in reversed(list(enumerate(paths)))}  # first row of each file
    where = f"the manifest {str(listed_in)!r}" if listed_in is not None else f"root={str(base)!r}"
    full = [p if os.path.isabs(p) else str(base / p) for p in rel]
    bad_path = next((i for i, p in enumerate(full) if _key(p) not in data), None)
    empty = next(
        (i for i, (p, lab) in enumerate(zip(rel, raw, strict=True)) if not p or not lab), None
    )
    bad_label = _first_bad_label(raw, class_names, what)
    first_bad = min((i for i in (bad_path, empty, bad_label) if i is not None), default=None)
    if first_bad is not None and first_bad == empty:
        raise UserInputError(f"{what} row {empty + 2}: empty path or label; expected path,label")
    if first_bad is not None and first_bad == bad_path:
        raise UserInputError(
            f"{what} row {bad_path + 2}: path {rel[bad_path]!r} is not a file of the data "
            f"({where}); the truth must list the same files as the data"
        )
    if first_bad is not None:
        raise UserInputError(
            f"{what} row {bad_label + 2}: label {raw[bad_label]!r} is not a class of the data; "
            f"expected a class name ({preview(list(class_names), 10)}) or a class id in "
            f"[0, {len(class_names)})"
        )
    ids, _ = parse_class_labels(raw, class_names, where=what)
    truth: dict[str, int] = {}
    first: dict[str, int] = {}
    for i, (p, k) in enumerate(zip(full, ids, strict=True)):
        key = _key(p)
        if key in truth and truth[key] != int(k):
            raise UserInputError(
                f"{what} row {i + 2}: {rel[i]!r} is listed again with another label ({raw[i]!r}; "
                f"row {first[key] + 2} has {raw[first[key]]!r}); list each file once"
            )
        truth.setdefault(key, int(k))
        first.setdefault(key, i)
    for j, p in enumerate(paths):
        if _key(p) not in truth:
            row = f" (row {j + 2} of {where[4:]})" if listed_in is not None else ""
            raise UserInputError(
                f"{what} has no row for {paths[j]!r}{row}; the truth must list every file of "
                f"the data ({len(truth)} of {len(data)} listed)"
            )
    return truth


def truth_of(truth: dict[str, int], sources: Sequence[str]) -> np.ndarray:
    """``(N,)`` int64 true class ids of the rows whose files are ``sources``."""
    return np.asarray([truth[_key(s)] for s in sources], dtype=np.int64)


def with_truth(noise: NoiseResult, true_labels: np.ndarray) -> NoiseResult:
    """The noise result scored against given true labels (a truth manifest).

    The given labels stay as they are (after any injected noise); ``true_labels``,
    ``is_noisy`` and the applied noise matrix (cleanlab's convention, ``P(given | true)``)
    become those of the truth.

    Args:
        noise: the data module's :class:`~dcloop.data.noise.NoiseResult`.
        true_labels: ``(N,)`` class ids in ``[0, C)``.
    """
    true = np.asarray(true_labels, dtype=np.int64)
    if true.shape != noise.given_labels.shape:
        raise ValueError(
            f"true_labels must have shape {noise.given_labels.shape}; got {true.shape}"
        )
    given = noise.given_labels
    return dataclasses.replace(
        noise,
        true_labels=true,
        is_noisy=given != true,
        noise_matrix=empirical_noise_matrix(given, true, noise.num_classes),
    )


def folder_truth(manifest: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write a truth manifest whose label is each path's parent folder (``<class>/<file>``).

    For data laid out ``root/<true class>/<file>`` whose given labels come from elsewhere
    (CIFAR-10N's manifests over the CIFAR-10 folders).

    Args:
        manifest: a CSV with a ``path`` column.
        out: the truth manifest to write (``path,label``).

    Returns:
        ``out`` as a ``Path``.
    """
    src = Path(manifest)
    rel, _ = _read(src, "manifest")
    labels = [Path(p).parent.name for p in rel]
    if any(not lab for lab in labels):
        i = next(k for k, lab in enumerate(labels) if not lab)
        raise UserInputError(
            f"manifest {str(src)!r} row {i + 2}: path {rel[i]!r} has no parent folder to "
            "take the true label from; expected <class>/<file>"
        )
    dst = Path(out)
    dst.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"path": rel, "label": labels}).to_csv(dst, index=False)
    return dst
