"""Label files: people's labels for the training split, read by ``data.labels=<file>``.

A label file is a CSV with one row per training sample it changes, keyed by ``index``
(the row of the sample in the run's label table). Columns:

* ``index`` (required): int in ``[0, N)``, each at most once.
* ``label`` (required): class id in ``[0, C)`` or class name.
* ``source`` (optional): checked against the dataset's source of that row.
* ``weight`` (optional): initial loss weight in ``[0, 1]`` (e.g. consensus quality).
* ``status`` (optional): one of :data:`STATUSES`; ``confirmed`` and ``corrected`` mean
  a person checked this label, so confident learning never flags the row again.
* ``original_label, changed_by, changed_at, from_file``: provenance, carried along.
* ``fingerprint`` (optional): :func:`fingerprint` of the source file when the file was
  written. A data folder moved elsewhere still matches its label file (rows are matched by
  their path relative to the folder); the fingerprints tell a moved folder from other data
  at the same relative paths.

Rows that the file does not list keep the dataset's label.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from dcloop._checks import parse_class_labels
from dcloop.csvsafe import read_csv
from dcloop.data.noise import empirical_noise_matrix

log = logging.getLogger(__name__)

#: Columns of a label file written by dcloop (``dcloop-import``, ``dcloop-annotators``).
LABEL_FILE_COLUMNS: tuple[str, ...] = (
    "index",
    "source",
    "label",
    "original_label",
    "status",
    "changed_by",
    "changed_at",
    "from_file",
    "fingerprint",
)
#: Allowed values of the ``status`` column.
STATUSES: tuple[str, ...] = ("unchanged", "confirmed", "corrected", "consensus")
#: Statuses that mean "a person checked this label": never flagged again.
VERIFIED: tuple[str, ...] = ("confirmed", "corrected")


def _shown(values: Sequence[Any], limit: int = 5) -> str:
    vals = list(values)
    more = f" ... ({len(vals)} in all)" if len(vals) > limit else ""
    return ", ".join(repr(v) for v in vals[:limit]) + more


def check_columns(df: pd.DataFrame, required: Sequence[str], *, what: str) -> None:
    """Raise ``ValueError`` naming the missing columns and the ones found."""
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(
            f"{what}: missing column(s) {missing}; expected at least {list(required)}, "
            f"found {list(map(str, df.columns))}"
        )


def parse_index(values: pd.Series, n: int, *, what: str) -> np.ndarray:
    """Row ids ``(M,)`` int64 in ``[0, n)``, each once; errors name bad and duplicate ids."""
    num = pd.to_numeric(values, errors="coerce")
    bad = values[num.isna() | (num % 1 != 0)].tolist()
    if bad:
        raise ValueError(f"{what}: index value(s) {_shown(bad)} are not integers")
    idx = num.to_numpy().astype(np.int64)
    unknown = idx[(idx < 0) | (idx >= n)]
    if unknown.size:
        raise ValueError(
            f"{what}: unknown id(s) {_shown(unknown.tolist())}; the training split has "
            f"indices 0..{n - 1}"
        )
    uniq, counts = np.unique(idx, return_counts=True)
    dup = uniq[counts > 1]
    if dup.size:
        raise ValueError(f"{what}: duplicate id(s) {_shown(dup.tolist())}; each index at most once")
    return idx


#: Bytes of a file a fingerprint reads (with the file's size).
FINGERPRINT_BYTES = 1 << 16


def fingerprint(source: str) -> str:
    """``"<size>:<crc32 of the first 64 KB>"`` of a source file, ``""`` for a source that is
    not a file here (in-memory data such as ``digits:12``)."""
    import zlib

    try:
        with open(source, "rb") as f:
            head = f.read(FINGERPRINT_BYTES)
        return f"{os.path.getsize(source)}:{zlib.crc32(head):08x}"
    except OSError:
        return ""


def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value == ""


def _moved(pairs: list[tuple[str, str]]) -> tuple[str, str] | None:
    """``(old folder, new folder)`` when every ``(old, new)`` source path pair is one folder
    moved: the same path relative to it. ``None`` otherwise."""
    old, new = (Path(p) for p in pairs[0])
    k = 0
    while k < min(len(old.parts), len(new.parts)) and old.parts[-1 - k] == new.parts[-1 - k]:
        k += 1
    if k == 0 or k >= len(old.parts) or k >= len(new.parts):
        return None
    old_root, new_root = Path(*old.parts[:-k]), Path(*new.parts[:-k])
    for a, b in pairs:
        try:
            rel = Path(a).relative_to(old_root)
        except ValueError:
            return None
        if Path(b) != new_root / rel:
            return None
    return str(old_root), str(new_root)


def check_sources(
    idx: np.ndarray,
    given: Sequence[Any],
    sources: Sequence[str],
    *,
    what: str,
    fingerprints: Sequence[Any] | None = None,
):
    """Raise ``ValueError`` when the file's ``source`` of a row differs from the dataset's.

    A data folder that moved (every differing source is the same path relative to an old
    and a new folder) is accepted with a warning that says so; with ``fingerprints`` (the
    file's ``fingerprint`` column) the files' contents are compared too, and different
    contents at the same relative paths are refused as other data.
    """
    wrong = [
        (int(i), str(s), str(sources[i]))
        for i, s in zip(idx, given, strict=True)
        if not _is_blank(s) and str(s) != str(sources[i])
    ]
    moved = _moved([(s, t) for _, s, t in wrong]) if wrong else None
    if moved is not None:
        old_root, new_root = moved
        if fingerprints is not None:
            prints = dict(zip((int(i) for i in idx), fingerprints, strict=True))
            checked = [(i, t) for i, _, t in wrong if not _is_blank(prints.get(i))]
            differ = [(i, t) for i, t in checked if fingerprint(t) != str(prints[i])]
            if differ:
                i, t = differ[0]
                raise ValueError(
                    f"{what}: its files were under {old_root!r}, and the data is now under "
                    f"{new_root!r} at the same relative paths, but {len(differ)} of "
                    f"{len(checked)} file(s) differ in content (e.g. index {i}, {t!r}): other "
                    "data, not a moved folder; expected the label file of this data"
                )
            how = f"the contents of {len(checked)} file(s) match" if checked else "no fingerprints"
        else:
            how = "no fingerprints"
        log.warning(
            "%s: the data folder moved from %s to %s (%d rows matched by their path relative "
            "to it; %s)",
            what,
            old_root,
            new_root,
            len(wrong),
            how,
        )
        return
    if wrong:
        i, s, t = wrong[0]
        raise ValueError(
            f"{what}: source mismatch for {len(wrong)} row(s), e.g. index {i} has source "
            f"{s!r} in the file but {t!r} in the data; the file belongs to other data "
            "or another split (seed, val_frac, test_frac)"
        )


@dataclass
class LabelOverride:
    """A label file applied to the training split.

    Attributes:
        path: the file.
        labels: ``(N,)`` int64, the given labels after the file.
        weights: ``(N,)`` float32 initial loss weights (1 for rows without a weight).
        confirmed: ``(N,)`` bool, rows a person checked (never flagged again).
        rows: ``(M,)`` int64, the indices the file lists.
        num_changed: how many labels differ from the dataset's.
    """

    path: Path
    labels: np.ndarray
    weights: np.ndarray
    confirmed: np.ndarray
    rows: np.ndarray
    num_changed: int


def read_label_file(
    path: str | os.PathLike,
    labels: np.ndarray,
    class_names: Sequence[str],
    sources: Sequence[str] | None = None,
) -> LabelOverride:
    """Read and check a label file against the training split.

    Args:
        path: the CSV (see the module docstring).
        labels: ``(N,)`` the split's current given labels.
        class_names: the C class names.
        sources: ``(N,)`` the split's sources, to check the file's ``source`` column.

    Returns:
        A :class:`LabelOverride`.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: wrong columns, unknown or duplicate ids, unknown labels, bad weights
            or statuses, or sources that do not match.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label file not found: {path}")
    what = f"label file {path}"
    try:
        df = read_csv(path, dtype={"label": str, "source": str, "status": str, "fingerprint": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"{what}: not a readable CSV ({err})") from err
    check_columns(df, ["index", "label"], what=what)
    labels = np.asarray(labels, dtype=np.int64)
    n = labels.shape[0]
    idx = parse_index(df["index"], n, what=what)
    blank = df["label"].isna()
    if blank.any():
        raise ValueError(f"{what}: empty label for index {_shown(idx[blank.to_numpy()].tolist())}")
    new, _ = parse_class_labels(df["label"].tolist(), class_names, where=what, row_offset=2)
    if sources is not None and "source" in df.columns:
        prints = df["fingerprint"].tolist() if "fingerprint" in df.columns else None
        check_sources(idx, df["source"].tolist(), sources, what=what, fingerprints=prints)
    out = labels.copy()
    out[idx] = new
    weights = np.ones(n, dtype=np.float32)
    if "weight" in df.columns:  # the text as written: "nan" is not a blank
        text = pd.read_csv(path, usecols=["weight"], dtype=str, keep_default_na=False)["weight"]
        text = text.str.strip()
        num = pd.to_numeric(text.where(text != ""), errors="coerce").to_numpy(np.float64)
        bad = (text != "").to_numpy() & ~((num >= 0) & (num <= 1))  # NaN, inf, text, range
        if bad.any():
            raise ValueError(
                f"{what}: weight must be a number in [0, 1] (blank means 1); index "
                f"{_shown(idx[bad].tolist())} has {text[bad].iloc[0]!r}"
            )
        weights[idx] = np.where(np.isnan(num), 1.0, num).astype(np.float32)
        if not weights.any():
            raise ValueError(
                f"{what}: every weight is 0, so no sample would be trained on; weight 0 "
                "leaves a row out, 1 keeps it"
            )
    confirmed = np.zeros(n, dtype=bool)
    by_status = {"corrected": 0, "confirmed": 0}
    if "status" in df.columns:
        status = df["status"].fillna("unchanged").str.strip()
        unknown = sorted(set(status) - set(STATUSES))
        if unknown:
            raise ValueError(f"{what}: unknown status {_shown(unknown)}; allowed: {list(STATUSES)}")
        confirmed[idx] = status.isin(VERIFIED).to_numpy()
        by_status = {k: int((status == k).sum()) for k in by_status}
    changed = int((out != labels).sum())
    # the same words and counts as dcloop-import's line ("8 corrected, 2 confirmed")
    log.info(
        "label file %s: %d rows, %d labels changed; checked by people: %d corrected, "
        "%d confirmed (%d rows never flagged again)",
        path,
        idx.size,
        changed,
        by_status["corrected"],
        by_status["confirmed"],
        int(confirmed.sum()),
    )
    return LabelOverride(path, out, weights, confirmed, idx, changed)


def apply_label_file(noise, path, sources: Sequence[str], class_names: Sequence[str]):
    """Replace the given labels of a data module's noise result with a label file's.

    The dataset's own labels stay the reference: with injected noise they remain the
    ground truth (``true_labels``), so a run on corrected labels still reports precision
    and recall; ``is_noisy`` and the applied noise matrix are recomputed.

    Args:
        noise: the :class:`~dcloop.data.noise.NoiseResult` after injection.
        path: the label file.
        sources: ``(N,)`` the split's sources.
        class_names: the C class names.

    Returns:
        ``(new noise result, LabelOverride)``.
    """
    over = read_label_file(path, noise.given_labels, class_names, sources)
    true = noise.true_labels
    matrix = empirical_noise_matrix(over.labels, true, len(class_names))
    new = dataclasses.replace(
        noise, given_labels=over.labels, is_noisy=over.labels != true, noise_matrix=matrix
    )
    return new, over


def attach_label_file(table, override: LabelOverride | None) -> None:
    """Put a label file's confirmed rows and weights into a :class:`~dcloop.state.SampleTable`.

    No-op when ``override`` is ``None``. The weights become the table's ``prior_weights``
    (the confident-learning action multiplies into them) and its starting weights.
    """
    if override is None:
        return
    dev = table.labels.device
    table.confirmed.copy_(torch.as_tensor(override.confirmed, device=dev))
    table.prior_weights.copy_(torch.as_tensor(override.weights, device=dev))
    table.weights.copy_(table.prior_weights)
