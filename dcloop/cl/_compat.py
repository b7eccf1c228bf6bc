"""cleanlab's keywords that concern how cleanlab runs, not what it computes.

The public ``dcloop.cl`` functions accept every keyword of their cleanlab 2.9 namesakes so that
switching libraries is one import. The keywords checked here either change nothing in the
result (``n_jobs``, ``verbose``) or ask for something this engine does not do (cleanlab's own
cross-validation with an sklearn model); :func:`no_cross_validation` raises the one error that
says how to get out-of-fold probabilities with dcloop instead.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from dcloop._checks import check_int

logger = logging.getLogger(__name__)

#: What to do instead of cleanlab's ``X=`` / ``clf=`` cross-validation.
OOF_HINT = (
    "dcloop.cl works on out-of-fold predicted probabilities and does not cross-validate an "
    "sklearn model (cleanlab's X=/clf=/cv_n_folds=/seed=/clf_kwargs=/validation_func=); get "
    "them from a dcloop k-fold run (oof_probs.npy in its run folder) or the "
    "dcloop.callbacks.OOFCollector callback, then call {name}(labels, pred_probs)"
)


def check_n_jobs(n_jobs: Any) -> None:
    """``n_jobs`` as cleanlab accepts it: ``None`` or an integer >= 1 (results never depend on
    it; the engine does not fork workers)."""
    if n_jobs is not None:
        check_int("n_jobs", n_jobs, minimum=1, why="or None")


def report(verbose: Any, name: str, mask: torch.Tensor) -> None:
    """cleanlab prints the number of issues found when ``verbose``; dcloop logs it (INFO)."""
    if verbose:
        logger.info("%s: number of label issues found: %d", name, int(mask.sum()))


def no_cross_validation(name: str, **cv_options: Any) -> None:
    """Raise ``ValueError`` if any cleanlab cross-validation option was given."""
    given = sorted(k for k, v in cv_options.items() if v is not None)
    if given:
        raise ValueError(
            f"{name}: got {', '.join(given)}; " + OOF_HINT.format(name=f"dcloop.cl.{name}")
        )


def looks_like_x_labels(labels: Any, pred_probs: Any) -> bool:
    """Whether ``(labels, pred_probs)`` is cleanlab's positional ``(X, labels)``: a 2-D (or
    sparse) feature matrix first and 1-D labels second."""
    if pred_probs is None or labels is None:
        return False
    first = getattr(labels, "ndim", None)
    if first is None and hasattr(labels, "shape"):  # scipy sparse matrices
        first = len(labels.shape)
    second = getattr(pred_probs, "ndim", None)
    if second is None and isinstance(pred_probs, (list, tuple)):
        second = np.ndim(pred_probs)
    return first == 2 and second == 1


def host_matrix(value: Any, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A user-given small matrix (confident joint, thresholds) as a host numpy array of
    ``shape``, values as given (no dtype change)."""
    arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if arr.shape != shape or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise ValueError(f"{name} must be a numeric array of shape {shape}; got {value!r}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite; got {value!r}")
    return arr
