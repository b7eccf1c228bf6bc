"""Several annotators per item: consensus labels, agreement and annotator quality.

Two consensus methods side by side:

* ``cleanlab.multiannotator.get_label_quality_multiannotator`` (CROWDLAB), which weighs
  each annotator by their agreement with the others and the model's out-of-fold (OOF)
  probabilities by its agreement with the people;
* a plain majority vote (ties broken at random, seeded), for comparison.

Input is a long table, one row per (item, annotator, label), or a wide one: the item first,
then one column per annotator (CIFAR-10N's ``path,annotator_1,annotator_2,annotator_3``).
An item is a training index or a sample's source: its file path, or the end of it (a path
relative to the data's root, ``train/cat/0001.jpg``).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from dcloop._checks import parse_class_labels
from dcloop.csvsafe import unescape_cell
from dcloop.data.labelfile import check_columns

log = logging.getLogger(__name__)

LONG_COLUMNS = ("item", "annotator", "label")
#: First columns that make a table without ``annotator`` and ``label`` columns a wide one.
WIDE_ITEM_COLUMNS = ("item", "path", "source", "index")


def _melt(df: pd.DataFrame) -> pd.DataFrame:
    """A wide table (item column first, one column per annotator, blank: not labelled) as
    long rows ``item, annotator, label``, item by item."""
    item, annotators = df.columns[0], list(df.columns[1:])
    long = df.melt(id_vars=[item], value_vars=annotators, var_name="annotator", value_name="label")
    long = long.rename(columns={item: "item"})
    long["_row"] = np.tile(np.arange(len(df)), len(annotators))
    long = long[long["label"].str.strip() != ""].sort_values("_row", kind="stable")
    return long.drop(columns="_row").reset_index(drop=True)


def _path_suffixes(sources: Sequence[str]) -> dict[str, int]:
    """``{trailing part of a source's path: row}``, ``-1`` where the part is ambiguous."""
    out: dict[str, int] = {}
    for i, s in enumerate(sources):
        parts = os.path.normpath(str(s)).replace(os.sep, "/").split("/")
        for k in range(len(parts)):
            tail = "/".join(parts[k:])
            out[tail] = i if out.get(tail, i) == i else -1
    return out


def _item_rows(raw: pd.Series, items: pd.Series, sources, num_items: int) -> np.ndarray:
    """Each item's training row: a source first, then an index, then the end of a path."""
    pos = {str(s): i for i, s in enumerate(sources)} if sources is not None else {}
    tails: dict[str, int] | None = None
    index = np.full(len(raw), -1, dtype=np.int64)
    for k, (exact, item) in enumerate(zip(raw, items, strict=True)):
        if exact in pos or item in pos:
            index[k] = pos[exact] if exact in pos else pos[item]
        elif item.lstrip("-").isdigit():
            index[k] = int(item) if 0 <= int(item) < num_items else -1
        elif sources is not None and item:
            if tails is None:
                tails = _path_suffixes(sources)
            index[k] = tails.get(os.path.normpath(item).replace(os.sep, "/"), -1)
    return index


def read_annotations(
    path_or_frame: str | os.PathLike | pd.DataFrame,
    class_names: Sequence[str],
    num_items: int,
    sources: Sequence[str] | None = None,
    *,
    skip_unknown: bool = False,
) -> pd.DataFrame:
    """Check a long annotation table; return it with ``index`` and class-id ``label``.

    Args:
        path_or_frame: a CSV path or a frame with columns ``item, annotator, label``, or a
            wide one: no ``annotator`` and ``label`` columns, the first column (``item``,
            ``path``, ``source`` or ``index``) the item and every other column an annotator
            (a blank cell: not labelled). ``item`` is a training row index, or, when
            ``sources`` is given, a source (file path / dataset id) or the end of a source's
            path (a path relative to the data's root; it must fit one source only); ``label``
            is a class name or id.
        class_names: the C class names.
        num_items: N, the number of training rows.
        sources: ``(N,)`` sources, to match items given by source.
        skip_unknown: leave out (with a warning) the items that are not training rows, e.g.
            files the run held out for validation or test; by default they are an error.

    Returns:
        A frame with columns ``index`` (int64), ``annotator`` (str), ``label`` (int64).

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: wrong columns, unknown items, unknown labels or duplicate
            (item, annotator) pairs; the message names them.
    """
    if isinstance(path_or_frame, pd.DataFrame):
        df, what = path_or_frame.astype(str), "annotations"
    else:
        path = Path(path_or_frame)
        if not path.is_file():
            raise FileNotFoundError(f"annotations file not found: {path}")
        what = f"annotations file {path}"
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df.columns = [str(c).strip() for c in df.columns]
    wide = (
        "annotator" not in df.columns
        and "label" not in df.columns
        and len(df.columns) >= 2
        and df.columns[0] in WIDE_ITEM_COLUMNS
    )
    first = df.columns[0]
    if wide:
        df = _melt(df)
    else:
        check_columns(df, LONG_COLUMNS, what=what)
    if df.empty:
        raise ValueError(f"{what}: no annotations")
    raw = df["item"].map(unescape_cell)  # a source copied from a dcloop CSV
    items = raw.str.strip()
    index = _item_rows(raw, items, sources, num_items)
    bad = sorted(set(items[index < 0]))
    if bad and skip_unknown:  # e.g. the run held some annotated files out for validation
        log.warning(
            "%s: %d item(s) are not training rows of the run and are left out, e.g. %r",
            what,
            len(bad),
            bad[0],
        )
        keep = index >= 0
        df, index = df[keep].reset_index(drop=True), index[keep]
        bad = []
        if df.empty:
            raise ValueError(f"{what}: no annotated item is a training row of the run")
    if bad:
        shown = ", ".join(repr(b) for b in bad[:5])
        raise ValueError(
            f"{what}: unknown item(s) {shown}{' ...' if len(bad) > 5 else ''} ({len(bad)} in "
            f"all); an item is a training index in [0, {num_items}) or a sample's source (its "
            "path, or the end of it); skip_unknown (--skip-unknown) leaves such items out"
        )
    ann = df["annotator"].str.strip()
    if (ann == "").any():
        rows = np.flatnonzero((ann == "").to_numpy())[:5].tolist()
        raise ValueError(f"{what}: empty annotator in data row(s) {rows}")
    try:
        labels, _ = parse_class_labels(df["label"].tolist(), class_names, where=what)
    except ValueError as err:
        if not wide:
            raise
        raise ValueError(
            f"{err}; the file was read as a wide table (no 'annotator' and 'label' columns, "
            f"so column {first!r} is the item and each other column an annotator); "
            f"a long table has missing column(s) ['annotator', 'label'], expected at least "
            f"{list(LONG_COLUMNS)}"
        ) from err
    out = pd.DataFrame({"index": index, "annotator": ann.to_numpy(), "label": labels})
    dup = out.duplicated(["index", "annotator"], keep=False)
    if dup.any():
        pairs = out.loc[dup, ["index", "annotator"]].drop_duplicates().head(5)
        shown = ", ".join(f"(item {i}, {a!r})" for i, a in pairs.itertuples(index=False))
        raise ValueError(
            f"{what}: duplicate (item, annotator) pair(s) {shown}; one label per annotator and item"
        )
    return out


def to_wide(long: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(items (M,), labels (M, A) float with NaN where not labelled, annotator ids)``."""
    wide = long.pivot(index="index", columns="annotator", values="label").sort_index()
    return wide.index.to_numpy(np.int64), wide.to_numpy(dtype=float), [str(a) for a in wide.columns]


def majority_vote(labels: np.ndarray, num_classes: int, *, seed: int = 0):
    """Plain majority vote over annotators.

    Args:
        labels: ``(M, A)`` class ids with NaN where an annotator did not label.
        num_classes: C.
        seed: ties are broken uniformly at random with this seed.

    Returns:
        ``(consensus (M,) int64, agreement (M,) float)``: agreement is the fraction of the
        item's annotators who chose the consensus.
    """
    m = labels.shape[0]
    counts = np.zeros((m, num_classes))
    for a in range(labels.shape[1]):
        ok = ~np.isnan(labels[:, a])
        counts[np.flatnonzero(ok), labels[ok, a].astype(np.int64)] += 1
    rng = np.random.default_rng(seed)
    tied = counts == counts.max(1, keepdims=True)
    noise = rng.random(counts.shape)
    vote = np.where(tied, noise, -1.0).argmax(1)
    return vote.astype(np.int64), counts[np.arange(m), vote] / counts.sum(1)


@dataclass
class Consensus:
    """Consensus of several annotators, by cleanlab and by majority vote.

    Attributes:
        items: per annotated item (sorted by ``index``): ``index``, ``consensus_label``
            and ``consensus_quality`` (cleanlab), ``annotator_agreement``,
            ``num_annotations``, ``majority_label``, ``majority_agreement``,
            ``model_label`` (OOF argmax), ``model_agrees``.
        annotators: per annotator: ``annotator``, ``annotator_quality``,
            ``agreement_with_consensus``, ``agreement_with_model``, ``worst_class``,
            ``num_examples_labeled``.
        classes: per consensus class: ``class``, ``name``, ``items``,
            ``human_agreement`` (mean annotator agreement), ``model_agreement`` (OOF argmax
            equals consensus), ``mean_quality``, ``majority_differs``.
        model_weight: CROWDLAB's weight of the model relative to the annotators.
    """

    items: pd.DataFrame
    annotators: pd.DataFrame
    classes: pd.DataFrame
    model_weight: float


def consensus(
    long: pd.DataFrame,
    pred_probs: np.ndarray,
    class_names: Sequence[str],
    *,
    seed: int = 0,
) -> Consensus:
    """Consensus labels, per-item agreement and annotator quality.

    Args:
        long: checked annotations (:func:`read_annotations`).
        pred_probs: ``(N, C)`` OOF probabilities of the training set (rows by index).
        class_names: the C class names.
        seed: of the majority vote's tie-break.

    Returns:
        A :class:`Consensus`.
    """
    from cleanlab.multiannotator import get_label_quality_multiannotator

    pred_probs = np.asarray(pred_probs, dtype=float)
    c = len(class_names)
    if pred_probs.ndim != 2 or pred_probs.shape[1] != c:
        raise ValueError(f"pred_probs must be (N, {c}); got shape {pred_probs.shape}")
    items, wide, ids = to_wide(long)
    probs = pred_probs[items]
    frame = pd.DataFrame(wide, columns=ids)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = get_label_quality_multiannotator(
            frame, probs, consensus_method="best_quality", verbose=False, return_weights=True
        )
    lq = res["label_quality"]
    mv, mv_agree = majority_vote(wide, c, seed=seed)
    model = probs.argmax(1)
    cons = lq["consensus_label"].to_numpy(np.int64)
    per_item = pd.DataFrame(
        {
            "index": items,
            "consensus_label": cons,
            "consensus_quality": lq["consensus_quality_score"].to_numpy(),
            "annotator_agreement": lq["annotator_agreement"].to_numpy(),
            "num_annotations": lq["num_annotations"].to_numpy(np.int64),
            "majority_label": mv,
            "majority_agreement": mv_agree,
            "model_label": model,
            "model_agrees": model == cons,
        }
    )
    stats = res["annotator_stats"].rename_axis("annotator").reset_index()
    stats["annotator"] = stats["annotator"].astype(str)
    with_model = {
        a: float(np.mean(wide[~np.isnan(wide[:, j]), j] == model[~np.isnan(wide[:, j])]))
        for j, a in enumerate(ids)
    }
    stats["agreement_with_model"] = stats["annotator"].map(with_model)
    stats = stats[
        [
            "annotator",
            "annotator_quality",
            "agreement_with_consensus",
            "agreement_with_model",
            "worst_class",
            "num_examples_labeled",
        ]
    ]
    rows = []
    for k in range(c):
        m = cons == k
        rows.append(
            {
                "class": k,
                "name": str(class_names[k]),
                "items": int(m.sum()),
                "human_agreement": float(per_item["annotator_agreement"][m].mean())
                if m.any()
                else float("nan"),
                "model_agreement": float((model[m] == k).mean()) if m.any() else float("nan"),
                "mean_quality": float(per_item["consensus_quality"][m].mean())
                if m.any()
                else float("nan"),
                "majority_differs": int((mv[m] != k).sum()),
            }
        )
    log.info(
        "consensus of %d annotators on %d items; %d differ from the majority vote",
        len(ids),
        len(items),
        int((mv != cons).sum()),
    )
    return Consensus(per_item, stats, pd.DataFrame(rows), float(res["model_weight"]))


def consensus_label_file(
    cons: Consensus,
    sources: Sequence[str],
    original: np.ndarray,
    *,
    method: str = "cleanlab",
    weighted: bool = False,
    from_file: str = "",
) -> pd.DataFrame:
    """A label file (for ``data.labels=``) holding the consensus of the annotated items.

    Args:
        cons: a :class:`Consensus`.
        sources: ``(N,)`` sources of the training rows.
        original: ``(N,)`` the labels the run trained on.
        method: ``"cleanlab"`` (CROWDLAB) or ``"majority"`` (plain vote).
        weighted: add a ``weight`` column, the cleanlab consensus quality (training then
            weighs each item's loss by how sure the consensus is).
        from_file: the annotations file, for provenance.
    """
    if method not in ("cleanlab", "majority"):
        raise ValueError(f"method must be 'cleanlab' or 'majority'; got {method!r}")
    it = cons.items
    idx = it["index"].to_numpy()
    label = it["consensus_label" if method == "cleanlab" else "majority_label"].to_numpy()
    df = pd.DataFrame(
        {
            "index": idx,
            "source": [str(sources[i]) for i in idx],
            "label": label,
            "original_label": np.asarray(original)[idx],
            "status": "consensus",
            "changed_by": "cleanlab.multiannotator" if method == "cleanlab" else "majority_vote",
            "changed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "from_file": from_file,
        }
    )
    if weighted:
        df["weight"] = it["consensus_quality"].clip(0, 1).to_numpy()
    return df
