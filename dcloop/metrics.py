"""Detection metrics of flags and scores against known noise (functional, on tensors)."""

from __future__ import annotations

import torch


def detection_metrics(
    flags: torch.Tensor, is_noisy: torch.Tensor, quality: torch.Tensor | None = None
) -> dict[str, float]:
    """Precision, recall and F1 of ``flags`` against ``is_noisy``; AUROC of ``quality``.

    Args:
        flags: ``(N,)`` bool, the samples flagged as label errors.
        is_noisy: ``(N,)`` bool, the samples whose given label is wrong.
        quality: ``(N,)`` label-quality scores (lower = more likely wrong), optional.

    Returns:
        ``{"precision", "recall", "f1", "num_flagged", "num_noisy"}`` and ``"auroc"``
        when ``quality`` is given (the probability that a noisy sample scores below a
        clean one; ties count half).
    """
    flags = flags.bool()
    is_noisy = is_noisy.bool()
    tp = (flags & is_noisy).sum().item()
    n_flag = flags.sum().item()
    n_noisy = is_noisy.sum().item()
    precision = tp / n_flag if n_flag else 0.0
    recall = tp / n_noisy if n_noisy else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    out = {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "num_flagged": int(n_flag),
        "num_noisy": int(n_noisy),
    }
    if quality is not None:
        out["auroc"] = auroc(-quality.double(), is_noisy)
    return out


def auroc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` for ``positive`` (Mann-Whitney, ties half)."""
    positive = positive.bool()
    n_pos = int(positive.sum())
    n_neg = positive.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = torch.argsort(scores)
    sorted_scores = scores[order]
    ranks = torch.empty_like(scores, dtype=torch.float64)
    ranks[order] = torch.arange(1, scores.numel() + 1, dtype=torch.float64, device=scores.device)
    # average ranks over ties
    uniq, inverse = torch.unique(sorted_scores, return_inverse=True)
    sums = torch.zeros(uniq.numel(), dtype=torch.float64, device=scores.device)
    counts = torch.zeros_like(sums)
    sorted_ranks = ranks[order]
    sums.index_add_(0, inverse, sorted_ranks)
    counts.index_add_(0, inverse, torch.ones_like(sorted_ranks))
    ranks[order] = (sums / counts)[inverse]
    rank_sum = ranks[positive].sum().item()
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
