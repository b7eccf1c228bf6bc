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

``low_self_confidence`` / ``low_normalized_margin`` flag the lowest-scoring examples, as many as
the confident-learning filter flags (cleanlab's ``num_label_issues``), without step 4.
``multi_label=True`` goes to :mod:`dcloop.cl.multilabel` (one binary problem per class).

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
import warnings
from typing import Any

import numpy as np
import torch

from dcloop._checks import check_choice, check_float, check_int
from dcloop.cl import _kxk
from dcloop.cl._compat import check_n_jobs, host_matrix, report
from dcloop.cl._inputs import Inputs, prepare_inputs, public_entry
from dcloop.cl._prune import TIES, prune_by_class, prune_by_noise_rate
from dcloop.cl.count import Scan, confident_joint_from_scan, scan
from dcloop.cl.rank import SCORE_METHODS, order_issues, quality_scores

logger = logging.getLogger(__name__)

PRUNE_FILTERS = ("prune_by_noise_rate", "prune_by_class", "both")
LOW_FILTERS = ("low_self_confidence", "low_normalized_margin")
FILTER_BY = (*PRUNE_FILTERS, "confident_learning", "predicted_neq_given", *LOW_FILTERS)
BACKENDS = ("torch", "cleanlab")


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
    """``(N,)`` bool label-issue mask on the input device from an existing
    :func:`~dcloop.cl.count.scan` (and calibrated confident joint, when the caller has it): the
    pruning pass only (inputs and options already validated; not the ``low_*`` filters)."""
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


def low_score_mask(inputs: Inputs, s: Scan, method: str, ties: str = "index") -> torch.Tensor:
    """cleanlab's ``low_self_confidence`` / ``low_normalized_margin`` filters: the examples with
    the lowest scores, as many as ``count.num_label_issues`` estimates (the confident-learning
    off-diagonal count); no final reduction, as in cleanlab."""
    n_issues = int(mask_from_scan(inputs, s, filter_by="confident_learning").sum())
    scores = quality_scores(inputs, method)
    if ties == "cleanlab":
        pick = torch.from_numpy(np.argsort(scores.cpu().numpy())[:n_issues]).to(inputs.device)
    else:
        pick = torch.sort(scores, stable=True).indices[:n_issues]
    mask = torch.zeros(inputs.n, dtype=torch.bool, device=inputs.device)
    mask[pick] = True
    return mask


def mask_for(
    inputs: Inputs,
    *,
    filter_by: str,
    frac_noise: float = 1.0,
    num_to_remove_per_class: np.ndarray | None = None,
    min_examples_per_class: int = 1,
    ties: str = "index",
    confident_joint: np.ndarray | None = None,
) -> torch.Tensor:
    """``(N,)`` bool mask for any ``filter_by`` (inputs and options already validated); a given
    ``confident_joint`` drives the pruning filters as in cleanlab (not recalibrated)."""
    s = scan(inputs)
    if filter_by in LOW_FILTERS:
        return low_score_mask(inputs, s, filter_by[4:], ties)
    if filter_by == "confident_learning":
        confident_joint = None
    return mask_from_scan(
        inputs,
        s,
        filter_by=filter_by,
        frac_noise=frac_noise,
        num_to_remove_per_class=num_to_remove_per_class,
        min_examples_per_class=min_examples_per_class,
        ties=ties,
        confident_joint=confident_joint,
    )


def check_options(
    filter_by,
    return_indices_ranked_by,
    rank_by_kwargs,
    frac_noise,
    min_examples_per_class,
    backend,
    ties,
    n_jobs=None,
) -> bool:
    """Validate the options of :func:`find_label_issues`; returns ``adjust_pred_probs``."""
    check_choice("filter_by", filter_by, FILTER_BY)
    check_choice("ties", ties, TIES)
    check_choice("return_indices_ranked_by", return_indices_ranked_by, (None, *SCORE_METHODS))
    check_choice("backend", backend, BACKENDS)
    check_n_jobs(n_jobs)
    unknown = set(rank_by_kwargs or {}) - {"adjust_pred_probs"}
    if unknown:
        raise ValueError(f"rank_by_kwargs supports only 'adjust_pred_probs'; got {sorted(unknown)}")
    adjust = bool((rank_by_kwargs or {}).get("adjust_pred_probs", False))
    if adjust and return_indices_ranked_by == "confidence_weighted_entropy":
        raise ValueError("adjust_pred_probs is not supported for confidence_weighted_entropy")
    check_float("frac_noise", frac_noise, low=0, high=1, low_open=True)
    check_int("min_examples_per_class", min_examples_per_class, minimum=0)
    return adjust


def remove_per_class(value: Any, filter_by: str, k: int) -> np.ndarray | None:
    """``num_to_remove_per_class`` as cleanlab takes it: one number for every class or ``K`` of
    them (non-negative, finite), as a host ``(K,)`` array (ints stay int64)."""
    if value is None:
        return None
    if filter_by not in PRUNE_FILTERS:
        raise ValueError(
            f"num_to_remove_per_class is not supported with filter_by={filter_by!r}; it needs "
            "filter_by 'prune_by_noise_rate', 'prune_by_class' or 'both'"
        )
    arr = np.asarray(value.cpu() if isinstance(value, torch.Tensor) else value)
    numeric = np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    if arr.ndim == 0 and numeric:
        arr = np.full(k, arr[()])
    if arr.shape != (k,) or not numeric or not np.isfinite(arr).all() or (arr < 0).any():
        raise ValueError(
            f"num_to_remove_per_class must be one non-negative number or {k} of them (one per "
            f"class); got {value!r}"
        )
    return arr.astype(np.int64 if np.issubdtype(arr.dtype, np.integer) else np.float64)


def _warn_ignored(filter_by: str, frac_noise: float, remove: Any, confident_joint: Any) -> None:
    """cleanlab's warnings for options a filter ignores (``UserWarning``, same conditions)."""
    if filter_by not in PRUNE_FILTERS and (frac_noise != 1.0 or remove is not None):
        warnings.warn(
            "frac_noise and num_to_remove_per_class parameters are only supported for filter_by "
            f"'prune_by_noise_rate', 'prune_by_class', and 'both'; ignored with {filter_by!r}",
            UserWarning,
            stacklevel=3,
        )
    if filter_by == "confident_learning" and confident_joint is not None:
        warnings.warn(
            "The supplied `confident_joint` is ignored when `filter_by = 'confident_learning'`; "
            "the confident joint is re-estimated from the given labels",
            UserWarning,
            stacklevel=3,
        )


@public_entry
def find_label_issues(
    labels: Any,
    pred_probs: Any,
    *,
    return_indices_ranked_by: str | None = None,
    rank_by_kwargs: dict | None = None,
    filter_by: str = "prune_by_noise_rate",
    frac_noise: float = 1.0,
    num_to_remove_per_class: Any = None,
    min_examples_per_class: int = 1,
    confident_joint: Any = None,
    n_jobs: int | None = None,
    verbose: bool = False,
    multi_label: bool = False,
    backend: str = "torch",
    chunk_size: int | None = None,
    ties: str = "index",
) -> torch.Tensor | np.ndarray:
    """Find likely label errors with confident learning (``cleanlab.filter.find_label_issues``).

    Takes every keyword of cleanlab 2.9's ``find_label_issues``, with its semantics, plus
    ``backend``, ``chunk_size`` and ``ties``.

    Args:
        labels: ``(N,)`` int tensor/array of given labels in ``[0, K)``; with ``multi_label``,
            a list of N lists of classes (cleanlab's multi-label format).
        pred_probs: ``(N, K)`` float16/bfloat16/float32/float64 tensor/array of out-of-sample
            predicted probabilities on any device; rows must sum to 1 (within
            ``dcloop.cl._inputs.ROW_SUM_ATOL``; not with ``multi_label``). Half inputs are
            upcast to float32 one chunk at a time; results equal cleanlab's on ``pred_probs``
            cast to float32.
        return_indices_ranked_by: ``None`` for a mask, else a score method of
            :func:`dcloop.cl.get_label_quality_scores` to return flagged indices ranked by it.
        rank_by_kwargs: ``{"adjust_pred_probs": bool}`` for the ranking scores.
        filter_by: ``"prune_by_noise_rate"`` (default), ``"prune_by_class"``, ``"both"``,
            ``"confident_learning"``, ``"predicted_neq_given"``, ``"low_self_confidence"`` or
            ``"low_normalized_margin"`` (the lowest-scoring examples, as many as
            ``cleanlab.count.num_label_issues`` estimates).
        frac_noise: fraction of the estimated noise to flag (prune filters only; otherwise
            ignored with cleanlab's ``UserWarning``).
        num_to_remove_per_class: how many to flag per class, one number for all classes or
            ``K`` of them (prune filters only).
        min_examples_per_class: classes with at most this many examples are not pruned.
        confident_joint: a precomputed ``(K, K)`` confident joint (multi-label: ``(K, 2, 2)``)
            for the prune filters, used as given; ignored with a ``UserWarning`` by
            ``"confident_learning"``, as in cleanlab.
        n_jobs: accepted as cleanlab does (``None`` or an int >= 1). It changes nothing here:
            the engine runs in this process, on the host single-threaded (see
            ``DCLOOP_CL_THREADS``), and results never depend on it.
        verbose: log the number of issues found (INFO, logger ``dcloop.cl._compat``); cleanlab
            prints it.
        multi_label: labels are lists of classes; one-vs-rest per class exactly as cleanlab
            does it (one ``(N, 2)`` column pair at a time), a row is flagged if any class
            flags it. Warns ``DeprecationWarning`` as cleanlab 2.9 does (kept for parity:
            callers' tests expect it; dcloop keeps supporting the keyword).
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
    adjust = check_options(
        filter_by,
        return_indices_ranked_by,
        rank_by_kwargs,
        frac_noise,
        min_examples_per_class,
        backend,
        ties,
        n_jobs,
    )
    if multi_label:
        warnings.warn(
            "The multi_label argument to filter.find_label_issues() is deprecated in cleanlab "
            "2.9 (there: multilabel_classification.filter.find_label_issues()); dcloop.cl keeps "
            "it and warns for parity with cleanlab",
            DeprecationWarning,
            stacklevel=3,
        )
    if backend == "cleanlab":
        return _with_cleanlab(
            labels,
            pred_probs,
            filter_by=filter_by,
            return_indices_ranked_by=return_indices_ranked_by,
            rank_by_kwargs=dict(rank_by_kwargs or {}),
            frac_noise=frac_noise,
            num_to_remove_per_class=num_to_remove_per_class,
            min_examples_per_class=int(min_examples_per_class),
            confident_joint=confident_joint,
            verbose=verbose,
            multi_label=multi_label,
            chunk_size=chunk_size,
        )
    if multi_label:
        from dcloop.cl import multilabel

        return multilabel.find_label_issues(
            labels,
            pred_probs,
            filter_by=filter_by,
            return_indices_ranked_by=return_indices_ranked_by,
            adjust_pred_probs=adjust,
            frac_noise=float(frac_noise),
            num_to_remove_per_class=num_to_remove_per_class,
            min_examples_per_class=int(min_examples_per_class),
            confident_joint=confident_joint,
            ties=ties,
            chunk_size=chunk_size,
            verbose=verbose,
        )
    inputs = prepare_inputs(labels, pred_probs, chunk_size=chunk_size, check_probs=False)
    remove = remove_per_class(num_to_remove_per_class, filter_by, inputs.k)
    cj = None
    if confident_joint is not None:
        cj = host_matrix(confident_joint, "confident_joint", (inputs.k, inputs.k))
    _warn_ignored(filter_by, frac_noise, remove, cj)
    mask = mask_for(
        inputs,
        filter_by=filter_by,
        frac_noise=float(frac_noise),
        num_to_remove_per_class=remove,
        min_examples_per_class=int(min_examples_per_class),
        ties=ties,
        confident_joint=cj,
    )
    report(verbose, "find_label_issues", mask)
    if return_indices_ranked_by is None:
        return inputs.out(mask)
    ranked = order_issues(
        inputs, mask, return_indices_ranked_by, adjust_pred_probs=adjust, ties=ties
    )
    return inputs.out(ranked)


def _with_cleanlab(labels: Any, pred_probs: Any, *, chunk_size: Any, **options: Any) -> Any:
    """Run ``cleanlab.filter.find_label_issues`` on host numpy copies of the inputs."""
    from cleanlab.filter import find_label_issues as cleanlab_find_label_issues

    if options["multi_label"]:
        probs_in = pred_probs
        probs = probs_in.detach().cpu().numpy() if isinstance(probs_in, torch.Tensor) else probs_in
        lab = labels
    else:
        inputs = prepare_inputs(labels, pred_probs, chunk_size=chunk_size, check_probs=True)
        probs = inputs.probs.to("cpu", inputs.compute_dtype).numpy()
        lab = inputs.labels.cpu().numpy()
    for key in ("confident_joint", "num_to_remove_per_class"):
        if isinstance(options[key], torch.Tensor):
            options[key] = options[key].cpu().numpy()
    # n_jobs=1: cleanlab's default forks a multiprocessing pool, which can deadlock inside a
    # process that already runs torch threads (seen in a Lightning run).
    result = np.asarray(cleanlab_find_label_issues(lab, probs, n_jobs=1, **options))
    if isinstance(pred_probs, torch.Tensor):
        return torch.from_numpy(result).to(pred_probs.device)
    return result
