"""Anomalies in ``(X, Y)`` pairs, for tasks that are not classification.

Translation, transcription, captioning or regression labels cannot be checked by
confident learning, but a wrong target usually makes the *pair* unusual. Given embeddings
of X and of Y (or functions that make them), each side is standardised, the two are
concatenated, and every pair gets two outlier scores:

* ``knn``: cleanlab's :class:`~cleanlab.outlier.OutOfDistribution` on the features (mean
  distance to the k nearest other pairs, mapped to a score in [0, 1]);
* ``iforest``: scikit-learn's :class:`~sklearn.ensemble.IsolationForest`;
* ``residual`` (an extra, not on the concatenation): the distance of Y from the mean Y of
  the k pairs nearest in X, i.e. a kNN regression residual. It looks only at how Y depends
  on X, so a wrong target that is an ordinary Y value on its own still stands out.

All are reported as *anomaly* scores (higher = more unusual: ``1 - cleanlab score``,
``-score_samples``, the residual). Rows are ordered by ``knn``. IsolationForest splits on
one feature at a time, so it finds pairs with extreme values better than pairs whose X and
Y are each ordinary but do not belong together (see ``scripts/results/demo_pairs.md``).
With a ground-truth mask, precision and recall at a cut-off are given.

Example:
    >>> from dcloop.beyond.pairs import score_pairs
    >>> table = score_pairs(x_emb, y_emb)            # doctest: +SKIP
    >>> table.head()                                 # worst pairs first  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from dcloop._checks import check_int

log = logging.getLogger(__name__)

METHODS: tuple[str, ...] = ("knn", "iforest", "residual")


def _as_2d(name: str, arr: Any) -> np.ndarray:
    a = np.asarray(arr, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"{name} must be (N,) or (N, D), got shape {a.shape}")
    if not np.isfinite(a).all():
        bad = int(np.flatnonzero(~np.isfinite(a).all(1))[0])
        raise ValueError(f"{name} holds NaN or inf values, first in row {bad}")
    return a


def _sides(x, y, embed_x, embed_y, y_weight) -> tuple[np.ndarray, np.ndarray]:
    xe = _as_2d("X embeddings", embed_x(x) if embed_x is not None else x)
    ye = _as_2d("Y embeddings", embed_y(y) if embed_y is not None else y)
    if xe.shape[0] != ye.shape[0]:
        raise ValueError(
            f"X and Y must have one row per pair; got {xe.shape[0]} rows of X and "
            f"{ye.shape[0]} rows of Y"
        )
    if xe.shape[0] < 3:
        raise ValueError(f"need at least 3 pairs to score outliers, got {xe.shape[0]}")

    def std(a: np.ndarray) -> np.ndarray:
        sd = a.std(0)
        sd[sd == 0] = 1.0
        return (a - a.mean(0)) / sd / np.sqrt(a.shape[1])

    return std(xe), float(y_weight) * std(ye)


def pair_features(
    x: Any,
    y: Any,
    *,
    embed_x: Callable[[Any], Any] | None = None,
    embed_y: Callable[[Any], Any] | None = None,
    y_weight: float = 1.0,
) -> np.ndarray:
    """Standardised, concatenated pair features ``(N, Dx + Dy)``.

    Each side is standardised per column and divided by ``sqrt(D)`` so that X and Y count
    equally in distances whatever their widths; ``y_weight`` scales the Y side further.

    Args:
        x: ``(N, Dx)`` embeddings of X (or raw X when ``embed_x`` is given).
        y: ``(N, Dy)`` or ``(N,)`` embeddings of Y (regression targets are ``(N,)``).
        embed_x: optional function mapping raw ``x`` to ``(N, Dx)``.
        embed_y: optional function mapping raw ``y`` to ``(N, Dy)``.
        y_weight: weight of the Y side.

    Raises:
        ValueError: if X and Y have different numbers of rows, or hold NaN/inf.
    """
    return np.concatenate(_sides(x, y, embed_x, embed_y, y_weight), axis=1)


def knn_scores(features: np.ndarray, *, k: int = 10) -> np.ndarray:
    """Anomaly score per row from cleanlab's ``OutOfDistribution`` (kNN distance): ``(N,)``."""
    from cleanlab.outlier import OutOfDistribution

    k = int(min(k, len(features) - 1))
    ood = OutOfDistribution(params={"k": k})
    return 1.0 - np.asarray(ood.fit_score(features=features, verbose=False), dtype=np.float64)


def residual_scores(x_features: np.ndarray, y_features: np.ndarray, *, k: int = 10) -> np.ndarray:
    """Distance of each Y from the mean Y of its k nearest other pairs in X: ``(N,)``."""
    from sklearn.neighbors import NearestNeighbors

    k = int(min(k, len(x_features) - 1))
    _, idx = NearestNeighbors(n_neighbors=k + 1).fit(x_features).kneighbors(x_features)
    # drop the pair itself wherever it sits (ties: repeated X put it anywhere in the list)
    rows = np.arange(len(x_features))[:, None]
    not_self = idx != rows
    not_self[not_self.all(1), -1] = False  # self not among the k+1: drop the farthest
    others = idx[not_self].reshape(len(idx), k)
    return np.linalg.norm(y_features - y_features[others].mean(1), axis=1)


def iforest_scores(features: np.ndarray, *, seed: int = 0, n_estimators: int = 200) -> np.ndarray:
    """Anomaly score per row from an IsolationForest (``-score_samples``): ``(N,)``."""
    from sklearn.ensemble import IsolationForest

    forest = IsolationForest(n_estimators=n_estimators, random_state=seed, n_jobs=1)
    return -forest.fit(features).score_samples(features)


def score_pairs(
    x: Any,
    y: Any,
    *,
    embed_x: Callable[[Any], Any] | None = None,
    embed_y: Callable[[Any], Any] | None = None,
    k: int = 10,
    seed: int = 0,
    y_weight: float = 1.0,
) -> pd.DataFrame:
    """Outlier scores of every ``(X, Y)`` pair, worst first.

    Args:
        x, y, embed_x, embed_y, y_weight: see :func:`pair_features`.
        k: neighbours of the kNN score.
        seed: IsolationForest seed.

    Returns:
        Columns ``index`` (the row), ``knn``, ``iforest``, ``residual`` (anomaly scores,
        higher = worse) and ``<method>_rank`` (0 = most anomalous); rows ordered by ``knn``.
    """
    k = check_int("k", k, minimum=1, why="neighbours")
    xs, ys = _sides(x, y, embed_x, embed_y, y_weight)
    feats = np.concatenate([xs, ys], axis=1)
    df = pd.DataFrame(
        {
            "index": np.arange(len(feats)),
            "knn": knn_scores(feats, k=k),
            "iforest": iforest_scores(feats, seed=seed),
            "residual": residual_scores(xs, ys, k=k),
        }
    )
    for m in METHODS:
        df[f"{m}_rank"] = (-df[m]).rank(method="first").astype(int) - 1
    return df.sort_values(["knn_rank"], kind="stable").reset_index(drop=True)


def precision_recall(
    table: pd.DataFrame, is_anomaly: Any, *, top: int | None = None
) -> dict[str, dict[str, float]]:
    """Precision and recall of the top-``top`` pairs of each method against a truth mask.

    Args:
        table: output of :func:`score_pairs`.
        is_anomaly: ``(N,)`` bool, True for the pairs known to be corrupted.
        top: how many pairs each method flags (default: the number of true anomalies).

    Returns:
        ``{method: {"precision", "recall", "top", "auroc"}}`` for each method in the table.
    """
    from sklearn.metrics import roc_auc_score

    truth = np.asarray(is_anomaly, dtype=bool)
    n = len(table)
    if truth.shape != (n,):
        raise ValueError(f"is_anomaly must have one entry per pair ({n}), got {truth.shape}")
    top = int(truth.sum()) if top is None else int(top)
    if not 0 < top <= n:
        raise ValueError(f"top must be in [1, {n}], got {top}")
    by_index = table.sort_values("index")
    scores = {m: by_index[m].to_numpy() for m in METHODS if m in by_index}
    out = {}
    for name, s in scores.items():
        picked = np.argsort(-s, kind="stable")[:top]
        hits = int(truth[picked].sum())
        auroc = float(roc_auc_score(truth, s)) if 0 < truth.sum() < n else float("nan")
        out[name] = {
            "precision": hits / top,
            "recall": hits / max(int(truth.sum()), 1),
            "top": top,
            "auroc": auroc,
        }
    return out
