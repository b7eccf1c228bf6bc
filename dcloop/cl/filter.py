"""``find_label_issues`` on torch tensors, with cleanlab 2.x semantics (cleanlab ``filter``).

Pipeline (cleanlab ``filter.find_label_issues`` for single-label data):

1. one chunked pass over ``pred_probs`` (:func:`dcloop.cl.count.scan`): input validation,
   confident guesses and counts, argmax and cleanlab's ``_reduce_issues`` mask (the per-class
   thresholds come from a gather of ``p[i, labels[i]]`` before it);
2. the calibrated confident joint and the ``prune_count_matrix`` on the host (``(K, K)``);
3. the pruning rule selected by ``filter_by``: ``prune_by_noise_rate`` / ``both`` read each row
   once more, only at the columns its class is pruned towards (the second and last pass);
   ``prune_by_class`` works on ``(N,)`` vectors only;
4. cleanlab's final reduction: drop flags where the model's prediction is (within ``1e-6``) the
   given label.

Ties. cleanlab picks the lowest-scoring examples with ``np.argsort``, which is not stable: when
several examples share the score at a pruning cut-off, which of them cleanlab flags depends on
numpy's sort kernel (e.g. AVX-512 or not). By default (``ties="index"``) the lowest row indices
are flagged first, deterministically on every platform and device; masks then differ from
cleanlab's only on examples tied across a cut-off (bounded in ``tests/test_cl_parity.py``).
``ties="cleanlab"`` replays cleanlab's own ``np.argsort`` on just those tied lines and gives
bit-identical masks on the same numpy build. Everything else (thresholds, confident joint,
calibration, prune counts, the final reduction) is computed with cleanlab's exact arithmetic.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from dcloop._checks import check_choice, check_float, check_int
from dcloop.cl import _kxk
from dcloop.cl._inputs import Inputs, prepare_inputs, public_entry
from dcloop.cl._prune import TIES, prune_by_class, prune_by_noise_rate
from dcloop.cl.count import Scan, confident_joint_from_scan, scan
from dcloop.cl.rank import SCORE_METHODS, order_issues

logger = logging.getLogger(__name__)

FILTER_BY = (
    "prune_by_noise_rate",
    "prune_by_class",
    "both",
    "confident_learning",
    "predicted_neq_given",
)
BACKENDS = ("torch", "cleanlab")


def issues_mask(
    inputs: Inputs,
    *,
    filter_by: str,
    frac_noise: float = 1.0,
    num_to_remove_per_class: np.ndarray | None = None,
    min_examples_per_class: int = 1,
    ties: str = "index",
) -> torch.Tensor:
    """``(N,)`` bool label-issue mask on the input device (private; inputs already validated)."""
    return mask_from_scan(
        inputs,
        scan(inputs),
        filter_by=filter_by,
        frac_noise=frac_noise,
        num_to_remove_per_class=num_to_remove_per_class,
        min_examples_per_class=min_examples_per_class,
        ties=ties,
    )


def mask_from_scan(
    inputs: Inputs,
    s: Scan,
    *,
    filter_by: str,
    frac_noise: float = 1.0,
    num_to_remove_per_class: np.ndarray | None = None,
    min_examples_per_class: int = 1,
    ties: str = "index",
    confident_joint: np.ndarray | None = None,
) -> torch.Tensor:
    """:func:`issues_mask` from an existing :func:`~dcloop.cl.count.scan` (and calibrated
    confident joint, when the caller has it): the pruning pass only."""
    if filter_by == "predicted_neq_given":
        mask = s.pred != inputs.labels
    elif filter_by == "confident_learning":
        mask = s.confident & (s.guess != inputs.labels)
    else:
        cj = confident_joint
        if cj is None:
            cj = confident_joint_from_scan(inputs, s, calibrate=True)
        pcm = _kxk.prune_count_matrix(
            cj,
            s.label_counts,
            min_examples_per_class=min_examples_per_class,
            frac_noise=frac_noise,
            num_to_remove_per_class=num_to_remove_per_class,
        )
        if filter_by == "prune_by_class":
            mask = prune_by_class(inputs, s, pcm, min_examples_per_class, ties)
        elif filter_by == "prune_by_noise_rate":
            mask = prune_by_noise_rate(inputs, s, pcm, min_examples_per_class, ties)
        else:  # both
            mask = prune_by_class(inputs, s, pcm, min_examples_per_class, ties)
            mask &= prune_by_noise_rate(inputs, s, pcm, min_examples_per_class, ties)
    return mask & ~s.near_given


def _check_options(
    filter_by,
    return_indices_ranked_by,
    rank_by_kwargs,
    frac_noise,
    min_examples_per_class,
    backend,
    ties,
) -> bool:
    check_choice("filter_by", filter_by, FILTER_BY)
    check_choice("ties", ties, TIES)
    check_choice("return_indices_ranked_by", return_indices_ranked_by, (None, *SCORE_METHODS))
    check_choice("backend", backend, BACKENDS)
    unknown = set(rank_by_kwargs or {}) - {"adjust_pred_probs"}
    if unknown:
        raise ValueError(f"rank_by_kwargs supports only 'adjust_pred_probs'; got {sorted(unknown)}")
    adjust = bool((rank_by_kwargs or {}).get("adjust_pred_probs", False))
    if adjust and return_indices_ranked_by == "confidence_weighted_entropy":
        raise ValueError("adjust_pred_probs is not supported for confidence_weighted_entropy")
    check_float("frac_noise", frac_noise, low=0, high=1, low_open=True)
    check_int("min_examples_per_class", min_examples_per_class, minimum=0)
    return adjust


def _remove_per_class(value: Any, filter_by: str, k: int) -> np.ndarray | None:
    if value is None:
        return None
    if filter_by not in ("prune_by_noise_rate", "prune_by_class", "both"):
        raise ValueError(
            "num_to_remove_per_class is only supported with filter_by 'prune_by_noise_rate', "
            f"'prune_by_class' or 'both'; got filter_by={filter_by!r}"
        )
    arr = np.asarray(value.cpu() if isinstance(value, torch.Tensor) else value)
    if arr.shape != (k,) or not np.issubdtype(arr.dtype, np.integer) or (arr < 0).any():
        raise ValueError(
            f"num_to_remove_per_class must be {k} non-negative ints (one per class); got {value!r}"
        )
    return arr.astype(np.int64)


@public_entry
def find_label_issues(
    labels: Any,
    pred_probs: Any,
    *,
    filter_by: str = "prune_by_noise_rate",
    return_indices_ranked_by: str | None = None,
    rank_by_kwargs: dict | None = None,
    frac_noise: float = 1.0,
    num_to_remove_per_class: Any = None,
    min_examples_per_class: int = 1,
    backend: str = "torch",
    chunk_size: int | None = None,
    ties: str = "index",
) -> torch.Tensor | np.ndarray:
    """Find likely label errors with confident learning (``cleanlab.filter.find_label_issues``).

    Args:
        labels: ``(N,)`` int tensor/array of given labels in ``[0, K)``.
        pred_probs: ``(N, K)`` float16/bfloat16/float32/float64 tensor/array of out-of-sample
            predicted probabilities on any device; rows must sum to 1 (within
            ``dcloop.cl._inputs.ROW_SUM_ATOL``). Half inputs are upcast to float32 one chunk
            at a time; results equal cleanlab's on ``pred_probs`` cast to float32.
        filter_by: ``"prune_by_noise_rate"`` (default), ``"prune_by_class"``, ``"both"``,
            ``"confident_learning"`` or ``"predicted_neq_given"``.
        return_indices_ranked_by: ``None`` for a mask, else a score method of
            :func:`dcloop.cl.get_label_quality_scores` to return flagged indices ranked by it.
        rank_by_kwargs: ``{"adjust_pred_probs": bool}`` for the ranking scores.
        frac_noise: fraction of the estimated noise to flag (prune filters only).
        num_to_remove_per_class: ``(K,)`` ints, how many to flag per class (prune filters only).
        min_examples_per_class: classes with at most this many examples are not pruned.
        backend: ``"torch"`` (this engine) or ``"cleanlab"`` (cleanlab itself, on host numpy
            copies; ``chunk_size`` and ``ties`` do not apply).
        chunk_size: rows per ``[chunk, K]`` block (``None``: automatic).
        ties: ``"index"`` (default) flags the lowest row indices first when examples tie at a
            pruning cut-off; ``"cleanlab"`` replays cleanlab's own (unstable) ``np.argsort`` on
            the tied lines only, for bit-identical masks with cleanlab on the same numpy build.
            Ranked indices follow the same rule within equal scores.

    Returns:
        ``(N,)`` bool mask (True = likely label error), or ``(M,)`` int64 indices of the flagged
        examples, most likely errors first (ties by index). Torch tensor on ``pred_probs``'
        device for torch input, numpy array otherwise.

    Raises:
        ValueError: invalid option or input (see ``dcloop.cl._inputs.prepare_inputs``).
    """
    adjust = _check_options(
        filter_by,
        return_indices_ranked_by,
        rank_by_kwargs,
        frac_noise,
        min_examples_per_class,
        backend,
        ties,
    )
    # The engine's first pass (count.scan) checks the probabilities itself; cleanlab gets them
    # checked here.
    inputs = prepare_inputs(
        labels, pred_probs, chunk_size=chunk_size, check_probs=backend == "cleanlab"
    )
    remove = _remove_per_class(num_to_remove_per_class, filter_by, inputs.k)
    if filter_by in ("confident_learning", "predicted_neq_given") and frac_noise != 1.0:
        logger.warning("frac_noise is ignored with filter_by=%r", filter_by)
    if backend == "cleanlab":
        return _with_cleanlab(
            inputs,
            filter_by=filter_by,
            return_indices_ranked_by=return_indices_ranked_by,
            rank_by_kwargs=dict(rank_by_kwargs or {}),
            frac_noise=frac_noise,
            num_to_remove_per_class=remove,
            min_examples_per_class=int(min_examples_per_class),
        )
    mask = issues_mask(
        inputs,
        filter_by=filter_by,
        frac_noise=float(frac_noise),
        num_to_remove_per_class=remove,
        min_examples_per_class=int(min_examples_per_class),
        ties=ties,
    )
    if return_indices_ranked_by is None:
        return inputs.out(mask)
    ranked = order_issues(
        inputs, mask, return_indices_ranked_by, adjust_pred_probs=adjust, ties=ties
    )
    return inputs.out(ranked)


def _with_cleanlab(inputs: Inputs, **options: Any) -> torch.Tensor | np.ndarray:
    """Run ``cleanlab.filter.find_label_issues`` on host numpy copies of the inputs."""
    from cleanlab.filter import find_label_issues as cleanlab_find_label_issues

    probs = inputs.probs.to("cpu", inputs.compute_dtype).numpy()
    labels = inputs.labels.cpu().numpy()
    # n_jobs=1: cleanlab's default forks a multiprocessing pool, which can deadlock inside a
    # process that already runs torch threads (seen in a Lightning run).
    result = cleanlab_find_label_issues(labels, probs, n_jobs=1, **options)
    return inputs.out(torch.from_numpy(np.asarray(result)).to(inputs.device))
