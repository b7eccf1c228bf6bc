"""Label-quality scores on torch tensors (cleanlab ``rank``), computed in row chunks."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from dcloop._checks import check_choice
from dcloop.cl import _kxk
from dcloop.cl._inputs import Inputs, prepare_inputs, public_entry
from dcloop.cl.count import class_layout, self_confidence, thresholds_from

SCORE_METHODS = ("self_confidence", "normalized_margin", "confidence_weighted_entropy")


def _max_other(block: torch.Tensor, given: torch.Tensor) -> torch.Tensor:
    """``(rows,)`` max over the classes other than the given one (exact, no copy of the block)."""
    top2 = block.topk(2, dim=1).values
    return torch.where(given == top2[:, 0], top2[:, 1], top2[:, 0])


def _adjusted(block: torch.Tensor, bound: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """cleanlab ``_subtract_confident_thresholds`` for one chunk (in place on a new block)."""
    adj = block.to(bound.dtype) - bound
    adj += shift
    adj /= adj.sum(dim=1, keepdim=True)
    return adj


def quality_scores(inputs: Inputs, method: str, *, adjust_pred_probs: bool = False) -> torch.Tensor:
    """``(N,)`` label-quality scores in compute dtype (private, inputs already validated)."""
    sc_all = self_confidence(inputs)
    if method == "self_confidence" and not adjust_pred_probs:
        return sc_all
    adj_args = None
    if adjust_pred_probs:
        perm, starts, counts = class_layout(inputs)
        thr = thresholds_from(sc_all, perm, starts, counts)
        # numpy promotes float32 data with float64 thresholds (missing classes) to float64.
        dtype = torch.float64 if thr.dtype == np.float64 else inputs.compute_dtype
        bound = torch.from_numpy(np.ascontiguousarray(thr)).to(inputs.device, dtype)
        shift = torch.tensor(thr.max(), dtype=dtype, device=inputs.device)
        adj_args = (bound, shift)
    out_dtype = inputs.compute_dtype
    scores = torch.empty(inputs.n, dtype=out_dtype, device=inputs.device)
    log_k = math.log(inputs.k)
    for start, stop in inputs.chunks():
        given = inputs.labels[start:stop].unsqueeze(1)
        block = inputs.block(start, stop)
        if adj_args is not None:
            block = _adjusted(block, *adj_args)
        sc = block.gather(1, given).squeeze(1)
        if method == "self_confidence":
            scores[start:stop] = sc
        elif method == "normalized_margin":
            scores[start:stop] = (sc - _max_other(block, sc) + 1) / 2
        else:  # confidence_weighted_entropy; cleanlab divides by np.log(K), a float64 scalar
            entropy = -torch.special.xlogy(block, block).sum(dim=1).double() / log_k
            sc64 = sc.clamp(min=_kxk.CLIPPING_LOWER_BOUND).double()  # clipped in data dtype
            ratio = entropy / sc64
            scores[start:stop] = torch.log(ratio + 1) / ratio.clamp(min=_kxk.CLIPPING_LOWER_BOUND)
    return scores


@public_entry
def get_label_quality_scores(
    labels: Any,
    pred_probs: Any,
    *,
    method: str = "self_confidence",
    adjust_pred_probs: bool = False,
    chunk_size: int | None = None,
) -> torch.Tensor | np.ndarray:
    """Per-example label-quality scores, as ``cleanlab.rank.get_label_quality_scores``.

    Args:
        labels: ``(N,)`` int tensor/array of given labels in ``[0, K)``.
        pred_probs: ``(N, K)`` float tensor/array of predicted probabilities.
        method: ``"self_confidence"`` (``p[given]``), ``"normalized_margin"``
            (``(p[given] - max_{j != given} p[j] + 1) / 2``) or ``"confidence_weighted_entropy"``.
        adjust_pred_probs: subtract the per-class thresholds and renormalise first (not with
            ``confidence_weighted_entropy``).
        chunk_size: rows per ``[chunk, K]`` block (``None``: automatic).

    Returns:
        ``(N,)`` scores in ``[0, 1]``, lower = more likely mislabelled; float64 for float64 input,
        else float32; torch on the input device for torch input, else numpy.
    """
    check_choice("method", method, SCORE_METHODS)
    if adjust_pred_probs and method == "confidence_weighted_entropy":
        raise ValueError("adjust_pred_probs is not supported for confidence_weighted_entropy")
    inputs = prepare_inputs(labels, pred_probs, chunk_size=chunk_size)
    return inputs.out(quality_scores(inputs, method, adjust_pred_probs=adjust_pred_probs))


def order_issues(
    inputs: Inputs,
    mask: torch.Tensor,
    rank_by: str,
    *,
    adjust_pred_probs: bool = False,
    ties: str = "index",
) -> torch.Tensor:
    """Indices of ``mask`` sorted by ascending score.

    With ``ties="index"`` equal scores keep ascending index order (deterministic); cleanlab's
    ``order_label_issues`` uses the unstable ``np.argsort``, so only the order *within* groups of
    equal scores can differ. ``ties="cleanlab"`` runs that same ``np.argsort`` on the host.
    """
    idx = torch.nonzero(mask).squeeze(1)
    scores = quality_scores(inputs, rank_by, adjust_pred_probs=adjust_pred_probs)[idx]
    if ties == "cleanlab":
        order = torch.from_numpy(np.argsort(scores.cpu().numpy())).to(idx.device)
    else:
        order = torch.sort(scores, stable=True).indices
    return idx[order]
