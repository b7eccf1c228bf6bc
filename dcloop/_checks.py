"""Checks of user input, run once at the boundary, with messages that name the value (private).

One home for the checks every part of dcloop shares: typed values (:func:`check_int`,
:func:`check_float`, :func:`check_bool`, :func:`check_callable`, :func:`check_choice`),
labels (:func:`as_label_array`, :func:`check_labels`, :func:`check_label_range`,
:func:`parse_class_labels`), batches and run settings. Imports only numpy, the standard
library and :mod:`dcloop.errors` (torch where a check needs a tensor), so any module may use
it and the command line checks its input before torch loads.

Every message names the key, the value given and what was expected, e.g.
``"k must be an integer >= 1; got k=0"``.
"""

from __future__ import annotations

import math
import os
import re
import sys
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dcloop.errors import UserInputError

#: Largest seed numpy and Lightning accept.
MAX_SEED = 2**32 - 1


# ----------------------------------------------------------------------------- typed values
def is_int(value: Any) -> bool:
    """Whether ``value`` is an integer (Python or numpy), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _bounds(minimum, maximum, below) -> str:
    if minimum is not None and (maximum is not None or below is not None):
        closing = f"{maximum}]" if maximum is not None else f"{below})"
        return f" in [{minimum}, {closing}"
    if minimum is not None:
        return f" >= {minimum}"
    if maximum is not None:
        return f" <= {maximum}"
    if below is not None:
        return f" < {below}"
    return ""


def _fail(name: str, value: Any, expected: str, why: str | None) -> UserInputError:
    note = f" ({why})" if why else ""
    return UserInputError(f"{name} must be {expected}{note}; got {name}={value!r}")


def check_int(
    name: str,
    value: Any,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    below: int | None = None,
    why: str | None = None,
) -> int:
    """``value`` as an int, if it is an integer (not a bool) within the bounds.

    Args:
        name: the key, for the message.
        value: the value to check.
        minimum: smallest allowed value (inclusive).
        maximum: largest allowed value (inclusive).
        below: exclusive upper bound (``rank`` below ``num_replicas``).
        why: a short reason added to the message.

    Returns:
        ``int(value)``.

    Raises:
        UserInputError: naming ``name``, the value and the allowed range.

    Example:
        >>> check_int("folds", 5, minimum=2)
        5
        >>> check_int("rank", 2, minimum=0, below=2)
        Traceback (most recent call last):
        ...
        dcloop.errors.UserInputError: rank must be an integer in [0, 2); got rank=2
    """
    ok = is_int(value)
    ok = ok and (minimum is None or value >= minimum)
    ok = ok and (maximum is None or value <= maximum) and (below is None or value < below)
    if not ok:
        raise _fail(name, value, "an integer" + _bounds(minimum, maximum, below), why)
    return int(value)


def check_float(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    why: str | None = None,
) -> float:
    """``value`` as a float, if it is a finite number (not a bool) within the bounds.

    Args:
        name: the key, for the message.
        value: the value to check (int, float or numpy scalar).
        low, high: bounds (``None``: unbounded on that side).
        low_open, high_open: exclude the bound itself.
        why: a short reason added to the message.

    Returns:
        ``float(value)``.

    Raises:
        UserInputError: naming ``name``, the value and the allowed range.

    Example:
        >>> check_float("frac_noise", 0.5, low=0.0, high=1.0, low_open=True)
        0.5
    """
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )
    ok = ok and math.isfinite(value)
    ok = ok and (low is None or (value > low if low_open else value >= low))
    ok = ok and (high is None or (value < high if high_open else value <= high))
    if not ok:
        if low is not None and high is not None:
            rng = f" in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        elif low is not None:
            rng = f" {'>' if low_open else '>='} {low}"
        elif high is not None:
            rng = f" {'<' if high_open else '<='} {high}"
        else:
            rng = " (finite)"
        raise _fail(name, value, "a number" + rng, why)
    return float(value)


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is ``True`` or ``False`` (Python or numpy); else :class:`UserInputError`."""
    if not isinstance(value, (bool, np.bool_)):
        raise _fail(name, value, "true or false", None)
    return bool(value)


def check_callable(
    name: str, value: Any, *, allow_none: bool = True, expected: str = "a callable"
) -> Any:
    """``value`` if it is callable (or ``None`` when ``allow_none``).

    Args:
        name: the key, for the message.
        value: the value to check.
        allow_none: whether ``None`` is accepted.
        expected: what a valid value is, for the message (``"a factory optimizer(params)"``).

    Raises:
        UserInputError: naming ``name``, the value and ``expected``.
    """
    if value is None and allow_none:
        return None
    if not callable(value):
        raise _fail(name, value, expected + (" or None" if allow_none else ""), None)
    return value


def check_choice(name: str, value: Any, allowed: Sequence[Any]) -> None:
    """Raise :class:`UserInputError` (a ``ValueError``) naming ``value`` and the allowed ones."""
    if value not in tuple(allowed):
        raise UserInputError(f"{name} must be one of {list(allowed)}; got {value!r}")


# ----------------------------------------------------------------------------------- labels
def to_numpy(x) -> np.ndarray:
    """Return ``x`` (tensor, array or sequence) as a numpy array on the host."""
    torch = sys.modules.get("torch")  # (not imported here: the CLI checks start fast)
    if torch is not None and isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def as_label_array(labels: Any, *, name: str = "labels") -> np.ndarray:
    """Converts array-like integer labels to a 1-D ``np.int64`` array.

    Args:
        labels: Array-like of integer class ids, shape (N,). A list, NumPy array or tensor.
        name: Name used in error messages.

    Returns:
        A new ``np.ndarray`` of dtype int64, shape (N,).

    Raises:
        ValueError: If ``labels`` is not one-dimensional or holds non-integer values.
    """
    arr = to_numpy(labels)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional (N,), got shape {tuple(arr.shape)}")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype == bool or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise ValueError(f"{name} must hold integer class ids, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating):
        bad = ~np.isfinite(arr) | (arr != np.round(arr))
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{name} must hold integer class ids; row {first} holds {arr[first]!r}"
            )
    return arr.astype(np.int64, copy=True)


def check_label_range(labels: np.ndarray, num_classes: int, *, name: str = "labels") -> None:
    """Checks that every label lies in ``[0, num_classes)``.

    Args:
        labels: Integer labels, shape (N,).
        num_classes: Number of classes C.
        name: Name used in error messages.

    Raises:
        ValueError: Naming up to five offending rows and their values.
    """
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        shown = ", ".join(f"row {int(i)}: {int(labels[i])}" for i in bad[:5])
        raise ValueError(
            f"{name} must lie in [0, {num_classes}) for num_classes={num_classes}; "
            f"{bad.size} value(s) outside that range ({shown})"
        )


def check_labels(labels, num_classes: int | None = None) -> np.ndarray:
    """Validate integer labels in ``[0, num_classes)``; return them as ``(N,)`` int64.

    Raises:
        ValueError: labels are not 1-D integers, are empty, or lie outside the range.
    """
    arr = to_numpy(labels)
    if arr.ndim != 1:
        raise ValueError(f"labels must be 1-D (N,); got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError("labels is empty: there is nothing to train on")
    if not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.mod(arr, 1) == 0):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"labels must be integers; got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or (num_classes is not None and hi >= num_classes):
        bound = num_classes if num_classes is not None else "C"
        bad = arr[(arr < 0) | (arr >= (num_classes if num_classes is not None else hi + 1))]
        raise ValueError(
            f"labels must be in [0, {bound}); got min={lo}, max={hi} "
            f"(e.g. {sorted(set(bad.tolist()))[:5]})"
        )
    return arr


def check_num_classes(num_classes: Any, *, name: str = "num_classes") -> int:
    """Validates a class count: an int >= 1, returned as a Python int.

    Raises:
        ValueError: If it is not an integer >= 1.
    """
    if not is_int(num_classes) or num_classes < 1:
        raise ValueError(f"{name} must be an int >= 1, got {num_classes!r}")
    return int(num_classes)


def check_all_classes_present(labels: np.ndarray, num_classes: int, what: str = "labels") -> None:
    """Raise ``ValueError`` naming the classes of ``[0, num_classes)`` with no sample."""
    counts = np.bincount(labels, minlength=num_classes)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        raise ValueError(
            f"{what}: class(es) {empty.tolist()} have no samples; every class in "
            f"[0, {num_classes}) needs at least one. Set num_classes to the classes you have "
            f"or add samples."
        )


def preview(values: Sequence[Any], limit: int = 5) -> str:
    """Formats up to ``limit`` values for an error message, with the total count.

    Args:
        values: Values to show.
        limit: How many to show at most.

    Returns:
        A string such as ``"'a', 'b', ... (7 in total)"``.
    """
    shown = ", ".join(repr(str(v)) for v in list(values)[:limit])
    more = f", ... ({len(values)} in total)" if len(values) > limit else ""
    return shown + more


_ID = re.compile(r"[+-]?\d+(?:\.0*)?")


def _label_text(value: Any) -> str:
    """A raw label as stripped text (``None`` and NaN: ``""``)."""
    if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)):
        return ""
    return str(value).strip()


def _label_id(value: Any, text: str) -> int | None:
    """The integer id a raw label spells (``3``, ``"3"``, ``"3.0"``), else ``None``."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if is_int(value):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return int(value) if math.isfinite(value) and float(value).is_integer() else None
    return int(text.split(".")[0]) if _ID.fullmatch(text) else None


def _distinct(texts: Sequence[str], rows: Sequence[int]) -> str:
    """``"3 row(s), 2 distinct: 'a', 'b'"``: the rows and up to 5 of their distinct values."""
    values = list(dict.fromkeys(texts[i] for i in rows))
    more = ", ..." if len(values) > 5 else ""
    shown = ", ".join(repr(v) for v in values[:5])
    return f"{len(rows)} row(s), {len(values)} distinct: {shown}{more}"


def parse_class_labels(
    raw: Sequence[Any],
    class_names: Sequence[str] | None = None,
    *,
    where: str,
    row_offset: int = 0,
) -> tuple[np.ndarray, list[str]]:
    """Class ids from the label column of a file (csv manifest, text file, label file).

    Values are read as stripped strings; integers and integral floats (``"3.0"``, as pandas
    writes an int column with blanks) are class ids. A message names data row ``i`` as row
    ``i + row_offset``: 2 for a CSV file with a header (the row number a spreadsheet shows).

    * With ``class_names``: a value equal to a class name maps to it (names win over ids),
      else it must be an integer id in ``[0, C)``.
    * Without: all ids (>= 0) give ``class_names = ["0", ..., str(max)]``; all names give the
      sorted distinct names; a mix of ids and names is an error.

    Args:
        raw: ``(N,)`` the raw labels.
        class_names: the C class names, in class-id order, or ``None``.
        where: what is being read, for the messages (``"label file l.csv"``).
        row_offset: the row number of the first data row in the messages.

    Returns:
        ``(ids, class_names)``: ``(N,)`` int64 ids and the class names.

    Raises:
        UserInputError: naming ``where``, the first bad row and its value, up to 5 distinct
            bad values with their count, and what was expected.

    Example:
        >>> ids, names = parse_class_labels(["dog", "cat", "1"], ["cat", "dog"], where="x.csv")
        >>> ids.tolist(), names
        ([1, 0, 1], ['cat', 'dog'])
        >>> parse_class_labels(["b", "a", "b"], where="x.csv")[0].tolist()
        [1, 0, 1]
    """
    texts = [_label_text(v) for v in raw]
    ids = [_label_id(v, s) for v, s in zip(raw, texts, strict=True)]
    if class_names is not None:
        names = [str(n) for n in class_names]
        if len(set(names)) != len(names):
            raise UserInputError(f"{where}: class names must be unique; got {preview(names, 20)}")
        lookup = {n: k for k, n in enumerate(names)}
        out = np.empty(len(texts), dtype=np.int64)
        bad = []
        for i, (s, k) in enumerate(zip(texts, ids, strict=True)):
            if s in lookup:
                out[i] = lookup[s]
            elif k is not None and str(k) in lookup:  # "3.0" for the class named "3"
                out[i] = lookup[str(k)]
            elif k is not None and 0 <= k < len(names):
                out[i] = k
            else:
                bad.append(i)
        if bad:
            raise UserInputError(
                f"{where}: row {bad[0] + row_offset} has label {texts[bad[0]]!r}, which is not a "
                f"known class (unknown labels in {_distinct(texts, bad)}); expected a class name "
                f"({preview(names, 10)}) or a class id in [0, {len(names)})"
            )
        return out, names
    empty = [i for i, s in enumerate(texts) if not s]
    if empty:
        raise UserInputError(
            f"{where}: row {empty[0] + row_offset} has an empty label ({len(empty)} such "
            "row(s)); expected a class name or a class id >= 0"
        )
    id_rows = [i for i, k in enumerate(ids) if k is not None]
    name_rows = [i for i, k in enumerate(ids) if k is None]
    if id_rows and name_rows:
        i, j = id_rows[0], name_rows[0]
        id_values = list(dict.fromkeys(texts[r] for r in id_rows))
        name_values = list(dict.fromkeys(texts[r] for r in name_rows))
        raise UserInputError(
            f"{where}: the label column mixes class ids ({preview(id_values)}) and class names "
            f"({preview(name_values)}) in {len(id_rows)} and {len(name_rows)} row(s), e.g. "
            f"row {i + row_offset}: {texts[i]!r} and row {j + row_offset}: {texts[j]!r}; use one "
            "or the other for every row"
        )
    if name_rows:
        names = sorted(set(texts))
        lookup = {n: k for k, n in enumerate(names)}
        return np.array([lookup[s] for s in texts], dtype=np.int64), names
    out = np.array(ids, dtype=np.int64)
    neg = np.flatnonzero(out < 0).tolist()
    if neg:
        raise UserInputError(
            f"{where}: row {neg[0] + row_offset} has label {texts[neg[0]]!r}, a negative class id "
            f"(negative ids in {_distinct(texts, neg)}); expected class ids >= 0 or class names"
        )
    return out, [str(k) for k in range(int(out.max()) + 1 if out.size else 0)]


# ---------------------------------------------------------------------------- batches, runs
def check_batch(batch) -> None:
    """Raise ``ValueError`` unless a batch is ``(x, y, index)`` with an integer index."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 3:
        kind = type(batch).__name__
        n = len(batch) if isinstance(batch, (tuple, list)) else "n/a"
        raise ValueError(
            f"dcloop needs dataset items (x, y, index); got a {kind} of length {n}. Wrap "
            "your dataset with dcloop.data.WithIndex or use dcloop.data.IndexedTensorDataset."
        )
    import torch

    index = batch[2]
    ok = (
        isinstance(index, torch.Tensor)
        and not index.is_floating_point()
        and not (index.dtype == torch.bool)
    )
    if not ok:
        raise ValueError(
            "the third element of each item must be the integer sample index; got "
            f"{type(index).__name__} {getattr(index, 'dtype', '')}"
        )


def check_resume_path(path: Any) -> None:
    """Raise :class:`~dcloop.errors.UserInputError` unless ``path`` is a readable checkpoint.

    Lightning writes checkpoints as zip archives (``torch.save``); a file cut short (a run
    killed while saving, a partial copy) has no zip directory at its end. Remote paths
    (``s3://...``) are left to Lightning.
    """
    text = os.fspath(path)
    if "://" in text:
        return
    if not os.path.exists(text):
        raise UserInputError(f"resume={text!r}: no such checkpoint file")
    if not os.path.isfile(text):
        raise UserInputError(f"resume={text!r} is not a file; expected a .ckpt checkpoint")
    if not zipfile.is_zipfile(text):
        raise UserInputError(
            f"resume={text!r} is not a readable checkpoint ({os.path.getsize(text)} bytes, "
            "truncated or not written by torch.save); expected a .ckpt file such as "
            "<run dir>/checkpoints/last.ckpt"
        )


def check_run_config(cfg: Mapping[str, Any]) -> None:
    """Check the top-level run settings of a composed config before anything is built.

    Checks ``seed``, ``folds``, ``trainer.max_epochs`` and ``resume``; the data, model and
    confident-learning groups are checked by the objects they configure.

    Raises:
        UserInputError: naming the key, its value and what is expected.
    """
    check_int("seed", cfg.get("seed", 0), minimum=0, maximum=MAX_SEED)
    check_int(
        "folds", cfg.get("folds", 5), minimum=2,
        why="K fold replicas give the out-of-fold predictions",
    )  # fmt: skip
    trainer = cfg.get("trainer") or {}
    epochs = trainer.get("max_epochs") if isinstance(trainer, Mapping) else None
    if epochs is not None:
        check_int(
            "trainer.max_epochs", epochs, minimum=1,
            why="out-of-fold predictions come from training",
        )  # fmt: skip
    resume = cfg.get("resume")
    if resume is not None:
        check_resume_path(resume)
