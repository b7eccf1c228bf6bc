"""The fold-masked, per-sample weighted loss of the K fold replicas."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from dcloop.errors import UserInputError


def fold_masked_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    folds: torch.Tensor,
    weights: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    normalizer=None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    penalty: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of K replicas where replica k ignores the samples of fold k.

    Args:
        logits: ``(K, B, C)`` outputs of the K replicas on the same batch.
        targets: ``(B,)`` given labels, or ``(B, C)`` target distributions (``cl.relabel``).
        folds: ``(B,)`` fold of each sample in ``[0, K)``.
        weights: ``(B,)`` per-sample weights (1 keep, 0 pruned); ``None`` = all ones.
        label_smoothing: passed to ``F.cross_entropy``.
        normalizer: maps the ``(K,)`` weight sums of this batch to the denominators
            (under DDP: the global batch's sums / world size, so that DDP's gradient
            average equals the one-process gradient); ``None`` = the local sums.
        loss_fn: per-sample loss ``(logits (n, C), targets (n,)) -> (n,)`` in place of
            cross-entropy (``label_smoothing`` is then not used).
        penalty: ``(K, B)`` per-sample terms added to the loss before masking and weighting
            (early-learning regularisation, :mod:`dcloop.models.elr`).

    Returns:
        ``(total, per_replica)``: ``per_replica`` is ``(K,)``, each the weighted mean
        loss over that replica's training samples in the batch (0 when it has none);
        ``total`` is their sum, so each replica receives exactly its own gradient.
    """
    k, b, c = logits.shape
    repeated = targets.repeat(k) if targets.ndim == 1 else targets.repeat(k, 1)
    if loss_fn is None:
        ce = F.cross_entropy(
            logits.reshape(k * b, c),
            repeated,
            reduction="none",
            label_smoothing=label_smoothing,
        ).view(k, b)
    else:
        ce = loss_fn(logits.reshape(k * b, c), repeated).view(k, b)
    if penalty is not None:
        ce = ce + penalty
    replica = torch.arange(k, device=logits.device).unsqueeze(1)
    w = (folds.unsqueeze(0) != replica).to(ce.dtype)
    if weights is not None:
        w = w * weights.to(ce.dtype).unsqueeze(0)
    den = w.sum(1) if normalizer is None else normalizer(w.sum(1))
    per_replica = (w * ce).sum(1) / den.clamp_min(1e-8)
    return per_replica.sum(), per_replica


def _as_distribution(targets: torch.Tensor, num_classes: int, dtype) -> torch.Tensor:
    """``(n,)`` class ids or ``(n, C)`` distributions as ``(n, C)`` distributions."""
    if targets.ndim == 1:
        return F.one_hot(targets.long(), num_classes).to(dtype)
    return targets.to(dtype)


def gce_loss(
    logits: torch.Tensor, targets: torch.Tensor, q: float = 0.7, reduction: str = "none"
) -> torch.Tensor:
    """Generalized cross-entropy (Zhang & Sabuncu, 2018): ``(1 - p_y ** q) / q``.

    Between cross-entropy (``q -> 0``) and the mean absolute error (``q = 1``): a sample the
    network finds unlikely (often a wrong label) pulls less on the gradient than under
    cross-entropy. ``targets``: ``(n,)`` ids or ``(n, C)`` distributions (the student's soft
    targets: the loss is their expectation). As ``model.loss``::

        loss: {_target_: dcloop.models.losses.gce_loss, _partial_: true, q: 0.7}
    """
    if not 0.0 < q <= 1.0:
        raise ValueError(f"gce_loss: q must be in (0, 1]; got {q!r}")
    probs = logits.float().softmax(-1).clamp_min(1e-7)
    t = _as_distribution(targets, logits.shape[-1], probs.dtype)
    loss = (t * (1.0 - probs.pow(q)) / q).sum(-1)
    return _reduce(loss, reduction)


def sce_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = 0.1,
    beta: float = 1.0,
    reduction: str = "none",
) -> torch.Tensor:
    """Symmetric cross-entropy (Wang et al., 2019): ``alpha * CE + beta * RCE``.

    The reverse cross-entropy ``-sum_c p_c log t_c`` (``log 0`` clipped to ``-4``, as the
    paper) is bounded, so wrong labels cannot dominate. ``targets``: ``(n,)`` ids or
    ``(n, C)`` distributions. As ``model.loss``::

        loss: {_target_: dcloop.models.losses.sce_loss, _partial_: true, alpha: 0.1, beta: 1.0}
    """
    logp = logits.float().log_softmax(-1)
    t = _as_distribution(targets, logits.shape[-1], logp.dtype)
    ce = -(t * logp).sum(-1)
    rce = -(logp.exp() * t.clamp_min(1e-4).log()).sum(-1)
    return _reduce(alpha * ce + beta * rce, reduction)


def forward_nll(
    logits: torch.Tensor, targets: torch.Tensor, reduction: str = "none"
) -> torch.Tensor:
    """Forward-corrected negative log-likelihood (Patrini et al., 2017): ``-log <t, p>``.

    With ``t = M[given]`` (the noise matrix's row of the given label, ``M[i, j] = P(given = i
    | true = j)``, any positive scale) this is ``-log P(given | x)`` when the softmax ``p``
    is ``P(true | x)``: the network fits the given labels through the noise, so its own
    softmax is left to estimate the true label. With one-hot ``t`` it is cross-entropy.
    ``targets``: ``(n, C)`` non-negative rows, or ``(n,)`` ids (plain cross-entropy).
    """
    probs = logits.float().softmax(-1)
    t = _as_distribution(targets, logits.shape[-1], probs.dtype)
    loss = -(probs * t).sum(-1).clamp_min(1e-12).log()
    return _reduce(loss, reduction)


def check_soft_loss(
    loss_fn: Callable,
    num_classes: int,
    option: str = "model.mixup",
    off: str = "model.mixup=0",
    what: str = "mixed (soft) targets",
) -> None:
    """``option`` trains on soft targets: ``loss_fn`` must take ``(n, C)`` distributions."""
    logits = torch.zeros(2, num_classes)
    soft = torch.full((2, num_classes), 1.0 / num_classes)
    try:
        out = loss_fn(logits, soft)
    except Exception as err:  # noqa: BLE001 - any failure of the user's loss
        raise UserInputError(
            f"{option} trains on {what}, but model.loss fails on (n, C) "
            f"distributions: {type(err).__name__}: {err}. Use a loss that takes them "
            f"(cross-entropy, dcloop.models.losses.gce_loss or sce_loss) or set {off}"
        ) from err
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2,):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserInputError(
            f"{option} needs per-sample losses; model.loss gave {shape} for 2 soft targets"
        )


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    raise ValueError(f"reduction must be 'none', 'mean' or 'sum'; got {reduction!r}")
