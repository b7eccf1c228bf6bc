"""Result files of a run: issue table, class report, noise matrix, metrics."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from dcloop.csvsafe import neutralize
from dcloop.state import SampleTable


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write) -> Path:
    """Write through a temporary file in the same folder, then rename over ``path``.

    The file gets the permissions a plain ``open(path, "w")`` would give (``0o666`` less
    the umask), not ``mkstemp``'s private ``0o600``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:  # a read-only or missing folder: name the file, not the temp file
        raise _named(err, path) from err
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as err:  # e.g. disk full: name the file; the old one is left whole
        raise _named(err, path) from err
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _named(err: OSError, path: Path) -> OSError:
    """``err`` (same type) with a one-line message naming ``path``."""
    why = err.strerror or str(err)
    not_dir = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if not_dir is not None:
        why = f"{not_dir} is a file, not a folder"
    elif isinstance(err, PermissionError):
        why += f" (is {path.parent} read-only? choose another output path)"
    try:
        return type(err)(f"cannot write {path}: {why}")
    except TypeError:  # an OSError subclass with another signature
        return OSError(f"cannot write {path}: {why}")


def write_csv(df: pd.DataFrame, path: Path, *, spreadsheet_safe: bool = True) -> Path:
    """Write ``df`` (without its index) atomically.

    Every CSV dcloop writes is meant for people to open, so by default text cells that a
    spreadsheet would run as a formula get a leading ``'`` (see :mod:`dcloop.csvsafe`;
    read such a file back with :func:`dcloop.csvsafe.read_csv` to get the original text).
    """
    out = neutralize(df) if spreadsheet_safe else df
    return atomic_write(path, lambda tmp: out.to_csv(tmp, index=False))


def write_json(obj: Any, path: Path) -> Path:
    def dump(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, default=float)
            f.write("\n")

    return atomic_write(path, dump)


def _epochs(values: np.ndarray) -> pd.Series:
    """Epoch numbers with ``-1`` (no step) as a missing value: an empty cell in the CSV."""
    return pd.Series(values, dtype="Int64").mask(values < 0)


def issue_table(
    table: SampleTable,
    sources: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """One row per sample, flagged first, then worst label quality first.

    Columns: ``index, given_label, given_name, suggested_label, suggested_name, quality,
    flagged, weight, source, first_flagged_epoch, last_flagged_epoch`` and, with ground
    truth, ``true_label, is_noisy``. The ``*_name`` columns (the class names a person reads
    beside the ids) are there when ``class_names`` is given.
    """
    t = {k: v.detach().cpu().numpy() for k, v in table.state_dict().items()}
    n = len(t["labels"])
    df = pd.DataFrame(
        {
            "index": np.arange(n),
            "given_label": t["labels"],
            "suggested_label": t["suggested"],
            "quality": t["quality"],
            "flagged": t["flagged"],
            "weight": t["weights"],
            "source": list(sources) if sources is not None else [f"row:{i}" for i in range(n)],
            # empty (not -1) when no confident-learning step flagged the row
            "first_flagged_epoch": _epochs(t["first_flagged"]),
            "last_flagged_epoch": _epochs(t["last_flagged"]),
        }
    )
    if class_names is not None:
        names = np.asarray([str(c) for c in class_names], dtype=object)
        df.insert(2, "given_name", names[t["labels"]])
        df.insert(4, "suggested_name", names[t["suggested"]])
    if table.has_ground_truth:
        df["true_label"] = t["true_labels"]
        df["is_noisy"] = t["labels"] != t["true_labels"]
    return df.sort_values(
        ["flagged", "quality", "index"], ascending=[False, True, True], kind="stable"
    ).reset_index(drop=True)


def write_issue_table(path: Path, table: SampleTable, sources=None, class_names=None) -> Path:
    return write_csv(issue_table(table, sources, class_names), path)


def class_report(
    table: SampleTable,
    probs: torch.Tensor,
    class_noise_rate: torch.Tensor,
    class_names: Sequence[str] | None = None,
    weak_epochs=None,
) -> pd.DataFrame:
    """Per class: count, estimated noise rate, OOF accuracy, flagged count (+ truth).

    With ``weak_epochs`` ((C,), from :class:`~dcloop.callbacks.WeakClasses`) a ``weak``
    column holds the epoch each class first became weak (-1: never).
    """
    labels = table.labels.cpu().numpy()
    pred = probs.argmax(1).cpu().numpy()
    flagged = table.flagged.cpu().numpy()
    c = probs.shape[1]
    rows = []
    for k in range(c):
        m = labels == k
        row = {
            "class": k,
            "name": class_names[k] if class_names else str(k),
            "count": int(m.sum()),
            "noise_rate_est": float(class_noise_rate[k]),
            "oof_accuracy": float((pred[m] == k).mean()) if m.any() else float("nan"),
            "flagged": int(flagged[m].sum()),
        }
        if table.has_ground_truth:
            true = table.true_labels.cpu().numpy()
            row["noise_rate_true"] = float((true[m] != k).mean()) if m.any() else float("nan")
        if weak_epochs is not None:
            row["weak"] = int(weak_epochs[k])
        rows.append(row)
    return pd.DataFrame(rows)


def noise_matrix_frame(noise_matrix, class_names: Sequence[str] | None = None) -> pd.DataFrame:
    """``P(given=i | true=j)`` as a table: rows ``given_<i>``, columns ``true_<j>``."""
    nm = torch.as_tensor(noise_matrix).cpu().numpy()
    names = class_names or [str(k) for k in range(nm.shape[0])]
    df = pd.DataFrame(nm, columns=[f"true_{c}" for c in names])
    df.insert(0, "given", [f"given_{c}" for c in names])
    return df


def write_run_files(
    run_dir: Path,
    table: SampleTable,
    probs: torch.Tensor,
    result,
    sources=None,
    class_names: Sequence[str] | None = None,
    weak_epochs=None,
) -> None:
    """Write a run's result files (see README, "Results") into ``run_dir``."""
    run_dir = Path(run_dir)
    write_csv(issue_table(table, sources, class_names), run_dir / "label_issues.csv")
    write_csv(
        class_report(table, probs, result.class_noise_rate, class_names, weak_epochs),
        run_dir / "class_report.csv",
    )
    write_csv(noise_matrix_frame(result.noise_matrix, class_names), run_dir / "noise_matrix.csv")
    np.save(run_dir / "oof_probs.npy", probs.float().cpu().numpy())
    np.save(run_dir / "folds.npy", table.folds.cpu().numpy())
    torch.save(table.state_dict(), run_dir / "sample_table.pt")
