"""The fold-masked, per-sample weighted loss of the K fold replicas."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def fold_masked_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    folds: torch.Tensor,
    weights: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    normalizer=None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of K replicas where replica k ignores the samples of fold k.

    Args:
        logits: ``(K, B, C)`` outputs of the K replicas on the same batch.
        targets: ``(B,)`` given labels.
        folds: ``(B,)`` fold of each sample in ``[0, K)``.
        weights: ``(B,)`` per-sample weights (1 keep, 0 pruned); ``None`` = all ones.
        label_smoothing: passed to ``F.cross_entropy``.
        normalizer: maps the ``(K,)`` weight sums of this batch to the denominators
            (under DDP: the global batch's sums / world size, so that DDP's gradient
            average equals the one-process gradient); ``None`` = the local sums.
        loss_fn: per-sample loss ``(logits (n, C), targets (n,)) -> (n,)`` in place of
            cross-entropy (``label_smoothing`` is then not used).

    Returns:
        ``(total, per_replica)``: ``per_replica`` is ``(K,)``, each the weighted mean
        loss over that replica's training samples in the batch (0 when it has none);
        ``total`` is their sum, so each replica receives exactly its own gradient.
    """
    k, b, c = logits.shape
    if loss_fn is None:
        ce = F.cross_entropy(
            logits.reshape(k * b, c),
            targets.repeat(k),
            reduction="none",
            label_smoothing=label_smoothing,
        ).view(k, b)
    else:
        ce = loss_fn(logits.reshape(k * b, c), targets.repeat(k)).view(k, b)
    replica = torch.arange(k, device=logits.device).unsqueeze(1)
    w = (folds.unsqueeze(0) != replica).to(ce.dtype)
    if weights is not None:
        w = w * weights.to(ce.dtype).unsqueeze(0)
    den = w.sum(1) if normalizer is None else normalizer(w.sum(1))
    per_replica = (w * ce).sum(1) / den.clamp_min(1e-8)
    return per_replica.sum(), per_replica
