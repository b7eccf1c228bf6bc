"""One confident-learning verdict in one pass: flags, quality, suggested label, noise matrices.

``find_label_issues`` + ``get_label_quality_scores`` + ``estimate_joint`` +
``estimate_noise_matrices`` + an argmax read the ``(N, C)`` matrix five or more times; a
:func:`verdict` reads it in :func:`~dcloop.cl.count.scan` (validation, per-class thresholds,
confident joint, argmax, self-confidence) and, for the pruning rules, once more at the columns
each class is pruned towards. Every field equals what the separate calls give.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dcloop._checks import check_choice, check_float
from dcloop.cl import _kxk
from dcloop.cl._inputs import prepare_inputs, public_entry
from dcloop.cl.count import confident_joint_from_scan, scan
from dcloop.cl.filter import (
    BACKENDS,
    FILTER_BY,
    LOW_FILTERS,
    find_label_issues,
    low_score_mask,
    mask_from_scan,
)
from dcloop.cl.rank import SCORE_METHODS, quality_scores


@dataclass
class CLResult:
    """One confident-learning verdict (tensors on the probabilities' device).

    Attributes:
        flags: ``(N,)`` bool, samples whose given label is likely wrong.
        quality: ``(N,)`` float label-quality score in [0, 1], lower = worse.
        suggested: ``(N,)`` int64, the argmax of the probabilities (the label the model prefers).
        joint: ``(C, C)`` estimated joint ``P(given=i, true=j)``.
        noise_matrix: ``(C, C)`` ``P(given=i | true=j)`` (cleanlab's convention).
        class_noise_rate: ``(C,)`` estimated ``P(true != i | given = i)``.
        noise_rate: estimated fraction of wrong labels, ``1 - trace(joint)``.
    """

    flags: torch.Tensor
    quality: torch.Tensor
    suggested: torch.Tensor
    joint: torch.Tensor
    noise_matrix: torch.Tensor
    class_noise_rate: torch.Tensor
    noise_rate: float


def _tensor(x: Any) -> torch.Tensor:
    """``torch.as_tensor``, copying read-only numpy arrays (e.g. memory-mapped shards)."""
    if isinstance(x, np.ndarray) and not x.flags.writeable:
        x = x.copy()
    return torch.as_tensor(x)


@public_entry
def verdict(
    labels: Any,
    pred_probs: Any,
    *,
    filter_by: str = "prune_by_noise_rate",
    quality_method: str = "self_confidence",
    frac_noise: float = 1.0,
    backend: str = "torch",
    confirmed: Any = None,
) -> CLResult:
    """Flags, quality scores, suggested labels and noise estimates from out-of-fold softmax.

    Args:
        labels: ``(N,)`` given labels (tensor or array).
        pred_probs: ``(N, C)`` out-of-fold probabilities (tensor on any device, or array).
        filter_by: cleanlab's ``filter_by`` method.
        quality_method: cleanlab's label-quality score.
        frac_noise: fraction of the estimated number of issues to flag (cleanlab).
        backend: ``"torch"`` (this engine, on the probabilities' device) or ``"cleanlab"``
            (cleanlab's ``find_label_issues`` for the flags; the rest from this engine).
        confirmed: ``(N,)`` bool, rows a person confirmed: never flagged.

    Returns:
        :class:`CLResult`, tensors on the probabilities' device.
    """
    check_choice("filter_by", filter_by, FILTER_BY)
    check_choice("quality_method", quality_method, SCORE_METHODS)
    check_choice("backend", backend, BACKENDS)
    check_float("frac_noise", frac_noise, low=0, high=1, low_open=True)
    probs = _tensor(pred_probs)
    device = probs.device
    inputs = prepare_inputs(_tensor(labels).long().to(device), probs, check_probs=False)
    s = scan(inputs)  # validates the probabilities too
    cj = confident_joint_from_scan(inputs, s, calibrate=True)
    if backend == "cleanlab":
        flags = torch.as_tensor(
            find_label_issues(
                inputs.labels, probs, filter_by=filter_by, frac_noise=frac_noise, backend="cleanlab"
            ),
            device=device,
        )
    elif filter_by in LOW_FILTERS:
        flags = low_score_mask(inputs, s, filter_by[4:])
    else:
        flags = mask_from_scan(
            inputs, s, filter_by=filter_by, frac_noise=frac_noise, confident_joint=cj
        )
    if quality_method == "self_confidence":
        quality = s.self_conf  # p[i, given_i]: a gather, already done by the scan
    else:
        quality = quality_scores(inputs, quality_method)
    joint = cj / np.clip(float(np.sum(cj)), a_min=_kxk.TINY_VALUE, a_max=None)
    _, noise_matrix, _ = _kxk.estimate_latent(cj, s.label_counts, inputs.n)
    joint_t = torch.as_tensor(joint, device=device).float()
    row = joint_t.sum(1).clamp_min(1e-12)
    flags = flags.to(device).bool()
    if confirmed is not None:
        flags = flags & ~torch.as_tensor(confirmed, device=device).bool()
    return CLResult(
        flags=flags,
        quality=quality.to(device).float(),
        suggested=s.pred.to(device),
        joint=joint_t,
        noise_matrix=torch.as_tensor(noise_matrix, device=device).float(),
        class_noise_rate=1 - joint_t.diagonal() / row,
        noise_rate=float(1 - joint_t.trace()),
    )
