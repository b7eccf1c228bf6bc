"""Detection metrics of flags and scores against known noise (functional, on tensors)."""

from __future__ import annotations

import torch
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_f1_score,
    binary_precision,
    binary_recall,
)


def detection_metrics(
    flags: torch.Tensor, is_noisy: torch.Tensor, quality: torch.Tensor | None = None
) -> dict[str, float]:
    """Precision, recall and F1 of ``flags`` against ``is_noisy``; AUROC of ``quality``
    (torchmetrics' functional binary metrics).

    Args:
        flags: ``(N,)`` bool, the samples flagged as label errors.
        is_noisy: ``(N,)`` bool, the samples whose given label is wrong.
        quality: ``(N,)`` label-quality scores in [0, 1] (lower = more likely wrong), optional.

    Returns:
        ``{"precision", "recall", "f1", "num_flagged", "num_noisy"}`` and ``"auroc"``
        when ``quality`` is given (the probability that a noisy sample scores below a
        clean one; ties count half; NaN when every sample is noisy or none is).
    """
    flags = flags.bool()
    is_noisy = is_noisy.bool().long()
    out = {
        "precision": float(binary_precision(flags, is_noisy)),
        "recall": float(binary_recall(flags, is_noisy)),
        "f1": float(binary_f1_score(flags, is_noisy)),
        "num_flagged": int(flags.sum()),
        "num_noisy": int(is_noisy.sum()),
    }
    if quality is not None:
        out["auroc"] = auroc(1.0 - quality.double().clamp(0, 1), is_noisy)
    return out


def auroc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` in [0, 1] for ``positive`` (ties half);
    NaN when one of the two classes is empty."""
    positive = positive.bool()
    n_pos = int(positive.sum())
    if n_pos == 0 or n_pos == positive.numel():
        return float("nan")
    return float(binary_auroc(scores, positive.long()))
