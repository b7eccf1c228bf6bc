"""Confident learning on ``(given labels, OOF probs)`` and the actions on sample weights.

Plain functions on tensors, used by the :class:`~dcloop.callbacks.ConfidentLearning`
callback and by the sequential-mode merge step; tested without a Trainer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from dcloop import cl

FILTER_BY = cl.FILTER_BY
QUALITY_METHODS = cl.SCORE_METHODS
ACTIONS = ("prune", "downweight", "detect")
BACKENDS = cl.filter.BACKENDS


@dataclass
class CLResult:
    """One confident-learning verdict.

    Attributes:
        flags: ``(N,)`` bool, samples whose given label is likely wrong.
        quality: ``(N,)`` float label-quality score in [0, 1], lower = worse.
        suggested: ``(N,)`` int64, the OOF argmax (the label the model prefers).
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


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    """Raise ``ValueError`` naming ``value`` and the allowed ones."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}; got {value!r}")


def _tensor(x) -> torch.Tensor:
    """``torch.as_tensor``, copying read-only numpy arrays (e.g. memory-mapped shards)."""
    if isinstance(x, np.ndarray) and not x.flags.writeable:
        x = x.copy()
    return torch.as_tensor(x)


def confident_learning(
    labels: torch.Tensor,
    probs: torch.Tensor,
    *,
    filter_by: str = "prune_by_noise_rate",
    quality_method: str = "self_confidence",
    frac_noise: float = 1.0,
    backend: str = "torch",
    confirmed: torch.Tensor | None = None,
) -> CLResult:
    """Flags, quality scores and noise estimates from OOF probabilities.

    Args:
        labels: ``(N,)`` given labels (tensor or array).
        probs: ``(N, C)`` out-of-fold softmax (tensor on any device, or array).
        filter_by: cleanlab's ``filter_by`` method.
        quality_method: cleanlab's label-quality score.
        frac_noise: fraction of the estimated number of issues to flag (cleanlab).
        backend: ``"torch"`` (dcloop's engine, stays on the device) or ``"cleanlab"``.
        confirmed: ``(N,)`` bool, rows a person confirmed; they are never flagged.

    Returns:
        :class:`CLResult` with tensors on ``probs.device``.
    """
    check_choice("filter_by", filter_by, FILTER_BY)
    check_choice("quality_method", quality_method, QUALITY_METHODS)
    check_choice("backend", backend, BACKENDS)
    probs = _tensor(probs)
    device = probs.device
    probs = probs.float()
    labels = _tensor(labels).long().to(device)
    flags = cl.find_label_issues(
        labels, probs, filter_by=filter_by, frac_noise=frac_noise, backend=backend
    )
    quality = cl.get_label_quality_scores(labels, probs, method=quality_method)
    joint = torch.as_tensor(cl.estimate_joint(labels, probs), device=device).float()
    noise_matrix, _ = cl.estimate_noise_matrices(labels, probs)
    row = joint.sum(1).clamp_min(1e-12)
    return CLResult(
        flags=_unconfirmed(torch.as_tensor(flags, device=device).bool(), confirmed),
        quality=torch.as_tensor(quality, device=device).float(),
        suggested=probs.argmax(1),
        joint=joint,
        noise_matrix=torch.as_tensor(noise_matrix, device=device).float(),
        class_noise_rate=1 - joint.diagonal() / row,
        noise_rate=float(1 - joint.trace()),
    )


def _unconfirmed(flags: torch.Tensor, confirmed: torch.Tensor | None) -> torch.Tensor:
    """``flags`` with the rows people confirmed cleared."""
    if confirmed is None:
        return flags
    return flags & ~torch.as_tensor(confirmed, device=flags.device).bool()


def action_weights(
    flags: torch.Tensor,
    quality: torch.Tensor,
    *,
    action: str,
    floor: float = 0.0,
    power: float = 1.0,
) -> torch.Tensor:
    """Per-sample loss weights for one verdict.

    Args:
        flags: ``(N,)`` bool flags.
        quality: ``(N,)`` label-quality scores in [0, 1].
        action: ``"prune"`` (flagged -> 0), ``"downweight"`` (flagged ->
            ``max(floor, quality ** power)``) or ``"detect"`` (all 1).
        floor: smallest weight a down-weighted sample keeps.
        power: sharpens (> 1) or softens (< 1) the quality-to-weight map.

    Returns:
        ``(N,)`` float32 weights. Unflagged samples always get 1, so a sample that a
        later verdict clears comes back.
    """
    check_choice("action", action, ACTIONS)
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"floor must be in [0, 1]; got {floor}")
    if power <= 0:
        raise ValueError(f"power must be > 0; got {power}")
    ones = torch.ones_like(quality, dtype=torch.float32)
    if action == "detect":
        return ones
    if action == "prune":
        return torch.where(flags, torch.zeros_like(ones), ones)
    down = quality.float().clamp(0, 1).pow(power).clamp_min(floor)
    return torch.where(flags, down, ones)


_TENSORS = ("flags", "quality", "suggested", "joint", "noise_matrix", "class_noise_rate")


def broadcast_result(
    result: CLResult | None,
    num_samples: int,
    num_classes: int,
    device: torch.device,
    src: int = 0,
) -> CLResult:
    """Broadcast rank ``src``'s verdict to every rank, tensor by tensor, on ``device``.

    Only rank ``src`` needs ``result``; the others pass ``None``. Tensors travel with
    ``torch.distributed.broadcast`` (NCCL or gloo), not pickled: a pickled CUDA tensor
    would land on rank ``src``'s GPU.

    Args:
        result: the verdict on rank ``src``; ignored elsewhere.
        num_samples, num_classes: N and C (the same on every rank).
        device: this rank's device (``cuda:<local rank>`` with NCCL).
        src: the deciding rank.
    """
    n, c = num_samples, num_classes
    shapes = {
        "flags": ((n,), torch.uint8),
        "quality": ((n,), torch.float32),
        "suggested": ((n,), torch.int64),
        "joint": ((c, c), torch.float32),
        "noise_matrix": ((c, c), torch.float32),
        "class_noise_rate": ((c,), torch.float32),
    }
    mine = dist.get_rank() == src
    out = {}
    for name in _TENSORS:
        shape, dtype = shapes[name]
        if mine:
            t = getattr(result, name).to(device=device, dtype=dtype).contiguous()
        else:
            t = torch.empty(shape, dtype=dtype, device=device)
        dist.broadcast(t, src=src)
        out[name] = t
    rate = torch.tensor([result.noise_rate if mine else 0.0], dtype=torch.float64, device=device)
    dist.broadcast(rate, src=src)
    out["flags"] = out["flags"].bool()
    return CLResult(noise_rate=float(rate.item()), **out)
