"""Train/test discrepancy: what the test set holds that the training set lacks.

Embeddings come from the fold replicas' penultimate layer (:func:`replica_features`). Both
train and test go through the *same* map, the mean over the K replicas of each replica's
penultimate features: one fixed function, so train and test points are comparable (a
sample's held-out replica would put train samples in K different, unrelated coordinate
systems). Caveat: every train sample was seen by K-1 of the K replicas, test samples by
none, so a strongly over-fitted model separates train from test a little even without any
shift; read the domain AUC against 0.5 with that in mind.

Three views of the embeddings (:func:`discrepancy_report`):

* 2-D maps (UMAP from umap-learn and t-SNE from scikit-learn), train and test coloured
  apart, test-only points marked, saved as PNG;
* test-only neighbourhoods (:func:`find_test_only_patterns`): test samples whose k nearest
  neighbours in the pooled train+test set are mostly test, beyond what the test share of
  the pool explains (binomial tail ``<= alpha``), grouped into patterns;
* a cross-validated domain-classifier AUC (:func:`domain_auc`): 0.5 means train and test
  are indistinguishable, 1.0 fully apart.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.func import functional_call

from dcloop._checks import check_float, check_int
from dcloop.results import atomic_write, write_csv, write_json

log = logging.getLogger(__name__)


# ------------------------------------------------------------------- features
class _Embed(nn.Module):
    """Calls ``net.embed(x)`` if it exists, else returns the input of the last Linear."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if callable(getattr(self.net, "embed", None)):
            return self.net.embed(x)
        linears = [m for m in self.net.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError(
                f"{type(self.net).__name__} has no embed(x) method and no nn.Linear layer; "
                "add embed(x) returning its penultimate features (B, D)"
            )
        seen: list[torch.Tensor] = []
        handle = linears[-1].register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
        try:
            self.net(x)
        finally:
            handle.remove()
        return seen[-1].flatten(1)


def penultimate(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Penultimate features of one network: ``net.embed(x)`` or the last Linear's input.

    Args:
        net: any ``nn.Module`` classifier.
        x: inputs ``(B, ...)``.

    Returns:
        ``(B, D)`` features.
    """
    return _Embed(net)(x)


@torch.no_grad()
def replica_features(model: Any, loader: Any, *, combine: str = "mean") -> np.ndarray:
    """Penultimate features of every fold replica of a :class:`~dcloop.models.FoldEnsemble`.

    Runs the replicas with their stacked parameters (``torch.func.vmap`` when it can batch
    the network, else a loop), in eval mode, on the device the module is on; the features
    stay on the device until the end (one transfer).

    Args:
        model: a fitted FoldEnsemble.
        loader: batches ``(x, ...)`` (e.g. ``dm.oof_dataloader()``, ``dm.test_dataloader()``).
        combine: ``"mean"`` over the K replicas, ``(N, D)``, or ``"concat"``, ``(N, K*D)``.

    Returns:
        float32 array of features in loader order.
    """
    if combine not in ("mean", "concat"):
        raise ValueError(f"combine must be 'mean' or 'concat', got {combine!r}")
    params, buffers = model._stacked()
    skeleton = model._skeleton[0]
    was_training = skeleton.training
    skeleton.eval()
    wrapper = _Embed(skeleton)
    p = {"net." + n: v for n, v in params.items()}
    b = {"net." + n: v for n, v in buffers.items()}
    device = next(iter(params.values())).device
    num = model.num_folds

    def one(pp, bb, inp):
        return functional_call(wrapper, (pp, bb), (inp,))

    use_vmap = True
    out = []
    try:
        for batch in loader:
            x = (batch[0] if isinstance(batch, (tuple, list)) else batch).to(device)
            feats = None
            if use_vmap:
                try:
                    feats = torch.vmap(one, in_dims=(0, 0, None))(p, b, x)
                except Exception as err:  # noqa: BLE001 - any vmap limitation: loop instead
                    log.info("vmap cannot batch the embedding (%s); looping", type(err).__name__)
                    use_vmap = False
            if feats is None:
                feats = torch.stack(
                    [
                        one({n: v[k] for n, v in p.items()}, {n: v[k] for n, v in b.items()}, x)
                        for k in range(num)
                    ]
                )
            feats = feats.float()  # (K, B, D)
            if combine == "mean":
                out.append(feats.mean(0))
            else:
                out.append(feats.permute(1, 0, 2).reshape(feats.shape[1], -1))
    finally:
        skeleton.train(was_training)
    return torch.cat(out).cpu().numpy()


# ------------------------------------------------------------------- analysis
def _check_embeddings(train: Any, test: Any) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(train, dtype=np.float64)
    t = np.asarray(test, dtype=np.float64)
    for name, arr in (("train", a), ("test", t)):
        if arr.ndim != 2:
            raise ValueError(f"{name} embeddings must be 2-D (N, D), got shape {arr.shape}")
        if arr.shape[0] < 2:
            raise ValueError(f"{name} embeddings need at least 2 rows, got {arr.shape[0]}")
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} embeddings hold NaN or inf values")
    if a.shape[1] != t.shape[1]:
        raise ValueError(
            f"train and test embeddings must have the same width D; got {a.shape[1]} (train) "
            f"and {t.shape[1]} (test)"
        )
    return a, t


def _standardize(a: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pooled = np.concatenate([a, t])
    mu, sd = pooled.mean(0), pooled.std(0)
    sd[sd == 0] = 1.0
    return (a - mu) / sd, (t - mu) / sd


def find_test_only_patterns(
    train: Any, test: Any, *, k: int = 10, alpha: float = 0.01
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Test samples whose k nearest neighbours (pooled train+test) are mostly test.

    With M test and N train samples, a test sample's neighbour is another test sample with
    probability ``base = (M-1)/(N+M-1)`` when train and test come from one distribution. A
    test sample is flagged when its count of test neighbours ``c`` is more than half of k and
    ``P(Binomial(k, base) >= c) <= alpha``. Flagged samples linked as neighbours form one
    pattern (connected components), numbered by size.

    Args:
        train: ``(N, D)`` train embeddings.
        test: ``(M, D)`` test embeddings.
        k: neighbours per test sample.
        alpha: binomial tail probability below which a neighbourhood counts as test-only.

    Returns:
        ``(table, summary)``: one row per test sample (``test_index``, ``test_neighbours``,
        ``test_neighbour_frac``, ``flagged``, ``pattern`` (-1 if not flagged)), sorted flagged
        first, largest pattern first; and ``{"k", "alpha", "base_rate", "min_test_neighbours",
        "num_flagged", "num_patterns", "pattern_sizes"}``.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.stats import binom
    from sklearn.neighbors import NearestNeighbors

    a, t = _standardize(*_check_embeddings(train, test))
    n, m = len(a), len(t)
    k = check_int("k", k, minimum=1, below=n + m - 1, why="neighbours")
    check_float("alpha", alpha, low=0, high=1, low_open=True, high_open=True)
    pooled = np.concatenate([a, t])
    nn_ = NearestNeighbors(n_neighbors=k + 1).fit(pooled)
    _, idx = nn_.kneighbors(t)
    rows = []
    for j in range(m):
        own = n + j
        nb = [i for i in idx[j] if i != own][:k]
        rows.append(nb)
    nbrs = np.asarray(rows)  # (M, k) pooled indices
    is_test = nbrs >= n
    counts = is_test.sum(1)
    base = (m - 1) / (n + m - 1)
    c = np.arange(k + 1)
    tail = binom.sf(c - 1, k, base)  # P(X >= c)
    ok = np.flatnonzero((tail <= alpha) & (c > k / 2))
    cmin = int(ok[0]) if ok.size else k + 1
    flagged = counts >= cmin
    pattern = np.full(m, -1)
    sizes: list[int] = []
    if flagged.any():
        f_idx = np.flatnonzero(flagged)
        pos = {int(j): q for q, j in enumerate(f_idx)}
        src, dst = [], []
        for q, j in enumerate(f_idx):
            for nb in nbrs[j][is_test[j]]:
                r = pos.get(int(nb) - n)
                if r is not None:
                    src.append(q)
                    dst.append(r)
        g = coo_matrix((np.ones(len(src)), (src, dst)), shape=(f_idx.size, f_idx.size))
        _, comp = connected_components(g, directed=False)
        order = np.argsort(-np.bincount(comp), kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        pattern[f_idx] = rank[comp]
        sizes = np.bincount(pattern[f_idx]).tolist()
    table = pd.DataFrame(
        {
            "test_index": np.arange(m),
            "test_neighbours": counts,
            "test_neighbour_frac": counts / k,
            "flagged": flagged,
            "pattern": pattern,
        }
    )
    key = np.where(flagged, pattern, np.iinfo(np.int64).max)
    table = table.iloc[np.lexsort((-counts, key))].reset_index(drop=True)
    summary = {
        "k": int(k),
        "alpha": float(alpha),
        "base_rate": float(base),
        "min_test_neighbours": cmin,
        "num_flagged": int(flagged.sum()),
        "num_patterns": len(sizes),
        "pattern_sizes": sizes,
    }
    return table, summary


def domain_auc(
    train: Any, test: Any, *, folds: int = 5, seed: int = 0, max_samples: int = 20000
) -> dict[str, float]:
    """Cross-validated AUC of classifiers that tell test from train.

    Args:
        train: ``(N, D)`` train embeddings.
        test: ``(M, D)`` test embeddings.
        folds: stratified CV folds.
        seed: seeds the folds and the subsample.
        max_samples: subsample the pool to this many rows (stratified by domain).

    Returns:
        ``{"logistic": auc, "knn": auc}``: a standardised logistic regression (linear
        shift) and a 10-nearest-neighbour classifier (local, cluster-like shift).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    a, t = _check_embeddings(train, test)
    x = np.concatenate([a, t])
    y = np.r_[np.zeros(len(a), int), np.ones(len(t), int)]
    rng = np.random.default_rng(seed)
    if len(x) > max_samples:  # subsample each domain in proportion, keeping enough of each
        keep = []
        for domain in (0, 1):
            rows = np.flatnonzero(y == domain)
            share = max(round(max_samples * len(rows) / len(x)), 2 * folds)
            keep.append(rng.choice(rows, size=min(share, len(rows)), replace=False))
        keep = np.sort(np.concatenate(keep))
        x, y = x[keep], y[keep]
    folds = int(min(folds, np.bincount(y).min()))
    if folds < 2:
        raise ValueError("domain_auc needs at least 2 train and 2 test samples")
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    models = {
        "logistic": make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
        "knn": make_pipeline(StandardScaler(), KNeighborsClassifier(10)),
    }
    out = {}
    for name, clf in models.items():
        prob = cross_val_predict(clf, x, y, cv=cv, method="predict_proba")[:, 1]
        out[name] = float(roc_auc_score(y, prob))
    return out


def _map_2d(x: np.ndarray, method: str, seed: int) -> np.ndarray:
    dims = min(50, x.shape[0] - 1)
    if x.shape[1] > dims:
        from sklearn.decomposition import PCA

        x = PCA(dims, random_state=seed).fit_transform(x)
    if method == "umap":
        import umap

        nbrs = int(min(15, len(x) - 1))
        return umap.UMAP(n_neighbors=nbrs, random_state=seed, n_jobs=1).fit_transform(x)
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, (len(x) - 1) / 3))
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)


def embedding_maps(
    train: Any,
    test: Any,
    out_dir: str | os.PathLike,
    *,
    flagged: Sequence[bool] | None = None,
    methods: Sequence[str] = ("umap", "tsne"),
    max_points: int = 3000,
    seed: int = 0,
) -> dict[str, Path]:
    """2-D maps of the pooled embeddings, train and test coloured apart, as PNG.

    Args:
        train: ``(N, D)`` train embeddings.
        test: ``(M, D)`` test embeddings.
        out_dir: folder for ``<method>.png``.
        flagged: ``(M,)`` test samples to mark (test-only neighbourhoods).
        methods: any of ``"umap"``, ``"tsne"``.
        max_points: subsample (train and test in proportion; flagged test points always kept).
        seed: seeds the subsample and the maps.

    Returns:
        ``{method: path}``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bad = [mth for mth in methods if mth not in ("umap", "tsne")]
    if bad:
        raise ValueError(f"methods must be among 'umap', 'tsne'; got {bad}")
    a, t = _standardize(*_check_embeddings(train, test))
    n, m = len(a), len(t)
    flag = np.zeros(m, bool) if flagged is None else np.asarray(flagged, bool)
    if flag.shape != (m,):
        raise ValueError(f"flagged must have one entry per test sample ({m}), got {flag.shape}")
    rng = np.random.default_rng(seed)
    keep = np.arange(n + m)
    if n + m > max_points:
        must = n + np.flatnonzero(flag)
        rest = np.setdiff1d(keep, must)
        extra = rng.choice(rest, size=max(0, max_points - must.size), replace=False)
        keep = np.sort(np.concatenate([must, extra]))
    x = np.concatenate([a, t])[keep]
    is_test = keep >= n
    is_flag = np.zeros(keep.size, bool)
    is_flag[is_test] = flag[keep[is_test] - n]
    out = Path(out_dir)
    paths = {}
    for method in methods:
        xy = _map_2d(x, method, seed)
        fig, ax = plt.subplots(figsize=(6, 6), dpi=110)
        ax.scatter(*xy[~is_test].T, s=6, c="tab:blue", alpha=0.5, label=f"train ({n})")
        ax.scatter(*xy[is_test].T, s=6, c="tab:orange", alpha=0.7, label=f"test ({m})")
        if is_flag.any():
            ax.scatter(
                *xy[is_flag].T,
                s=30,
                facecolors="none",
                edgecolors="red",
                label=f"test-only neighbourhood ({int(flag.sum())})",
            )
        ax.set_title(f"{method.upper()} of penultimate embeddings")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(loc="best", fontsize=8)
        path = out / f"{method}.png"
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp, fig=fig: fig.savefig(tmp, format="png"))
        plt.close(fig)
        paths[method] = path
    return paths


def discrepancy_report(
    train: Any,
    test: Any,
    out_dir: str | os.PathLike,
    *,
    test_sources: Sequence[str] | None = None,
    k: int = 10,
    alpha: float = 0.01,
    maps: Sequence[str] = ("umap", "tsne"),
    max_points: int = 3000,
    seed: int = 0,
) -> dict[str, Any]:
    """All three views; writes ``discrepancy.json``, ``test_only_patterns.csv``, maps.

    Args:
        train: ``(N, D)`` train embeddings.
        test: ``(M, D)`` test embeddings.
        out_dir: output folder (created).
        test_sources: ``(M,)`` where each test sample came from (a column of the CSV).
        k, alpha: see :func:`find_test_only_patterns`.
        maps: which 2-D maps to draw (``()`` for none).
        max_points: subsample for the maps.
        seed: seeds everything random.

    Returns:
        The content of ``discrepancy.json``.
    """
    a, t = _check_embeddings(train, test)
    out = Path(out_dir)
    table, summary = find_test_only_patterns(a, t, k=k, alpha=alpha)
    if test_sources is not None:
        src = [str(s) for s in test_sources]
        if len(src) != len(t):
            raise ValueError(f"test_sources has {len(src)} entries, expected {len(t)}")
        table.insert(1, "source", [src[i] for i in table["test_index"]])
    auc = domain_auc(a, t, seed=seed)
    flag = np.zeros(len(t), bool)
    flag[table.loc[table["flagged"], "test_index"].to_numpy()] = True
    paths = embedding_maps(a, t, out, flagged=flag, methods=maps, max_points=max_points, seed=seed)
    write_csv(table[table["flagged"]], out / "test_only_patterns.csv")
    result = {
        "num_train": len(a),
        "num_test": len(t),
        "dim": int(a.shape[1]),
        "domain_auc": auc,
        "test_only": summary,
        "maps": {k_: str(p.name) for k_, p in paths.items()},
    }
    write_json(result, out / "discrepancy.json")
    log.info(
        "discrepancy: domain AUC logistic %.3f knn %.3f; %d test samples in %d test-only patterns",
        auc["logistic"],
        auc["knn"],
        summary["num_flagged"],
        summary["num_patterns"],
    )
    return result


def _save_npy(path: str, arr: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, arr)


def run_discrepancy(model: Any, dm: Any, out_dir: str | os.PathLike, **kwargs: Any) -> dict:
    """Embeds a run's train (no augmentation) and test sets and writes the report.

    Also saves ``train_embeddings.npy`` and ``test_embeddings.npy`` (mean over replicas)
    in ``out_dir`` so ``dcloop-beyond discrepancy`` can redo the analysis without the model.

    Args:
        model: the fitted FoldEnsemble.
        dm: the data module (``oof_dataloader``, ``test_dataloader``, ``test_dataset``).
        out_dir: output folder.
        **kwargs: passed to :func:`discrepancy_report`.
    """
    out = Path(out_dir)
    train = replica_features(model, dm.oof_dataloader())
    test = replica_features(model, dm.test_dataloader())
    out.mkdir(parents=True, exist_ok=True)
    for name, arr in (("train", train), ("test", test)):
        atomic_write(out / f"{name}_embeddings.npy", lambda tmp, a=arr: _save_npy(tmp, a))
    sources = None
    ds = getattr(dm, "test_dataset", None)
    if ds is not None and hasattr(ds, "source"):
        sources = [ds.source(i) for i in range(len(ds))]
    return discrepancy_report(train, test, out, test_sources=sources, **kwargs)
