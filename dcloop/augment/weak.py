"""The weak-class rule: which classes need more data, from the OOF probabilities.

A plain function on tensors (any device), called between epochs by
:class:`~dcloop.callbacks.WeakClasses` and tested on constructed matrices.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchmetrics.functional.classification import multiclass_recall

from dcloop._checks import check_float, check_int

#: Ways to turn per-class scores into a set of weak classes.
RULES: tuple[str, ...] = ("bottom_k", "threshold")


@dataclass
class WeakClassResult:
    """One verdict of the weak-class rule; all tensors are ``(C,)`` on the input's device.

    Attributes:
        weak: bool, the weak classes.
        score: float in [0, 1], ``recall * (1 - noise_rate) * min(1, remaining / median)``;
            lower is weaker.
        recall: OOF recall of each class on its samples that are not flagged (NaN when none
            is left).
        noise_rate: the estimated noise rate of each class (0 when not given).
        remaining: int64, samples of each (given) class left after pruning the flagged ones.
    """

    weak: torch.Tensor
    score: torch.Tensor
    recall: torch.Tensor
    noise_rate: torch.Tensor
    remaining: torch.Tensor


def class_recall(
    labels: torch.Tensor, probs: torch.Tensor, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-class recall of ``argmax(probs)`` against ``labels`` on the rows in ``keep``.

    Args:
        labels: ``(N,)`` integer labels.
        probs: ``(N, C)`` probabilities (or any scores; only the argmax is used).
        keep: ``(N,)`` bool rows to count (default: all).

    Returns:
        ``(C,)`` float32: for class k, the fraction of kept rows labelled k whose argmax is k;
        NaN for a class with no kept row.
    """
    c = probs.shape[1]
    labels = labels.long()
    keep = torch.ones_like(labels, dtype=torch.bool) if keep is None else keep.bool()
    total = torch.bincount(labels[keep], minlength=c).float()
    nan = torch.full_like(total, float("nan"))
    if not bool(keep.any()):
        return nan
    recall = multiclass_recall(
        probs.argmax(1)[keep], labels[keep], num_classes=c, average="none"
    ).float()
    return torch.where(total > 0, recall, nan)  # torchmetrics gives 0 where a class has no row


def weak_classes(
    labels,
    probs,
    *,
    flags=None,
    class_noise_rate=None,
    rule: str = "bottom_k",
    k: int = 3,
    threshold: float = 0.8,
) -> WeakClassResult:
    """Find the weak classes from OOF probabilities and a confident-learning verdict.

    Each class gets a score in [0, 1] from three signals: its OOF recall on the samples not
    flagged (does the model recognise the class?), one minus its estimated noise rate (can its
    labels be trusted?) and how many of its samples are left after pruning, relative to the
    median class (``min(1, remaining / median)``: is there enough data?). The score is their
    product; a class with no sample left scores 0.

    Args:
        labels: ``(N,)`` given labels (tensor or array).
        probs: ``(N, C)`` out-of-fold probabilities.
        flags: ``(N,)`` bool confident-learning flags (default: none flagged).
        class_noise_rate: ``(C,)`` estimated ``P(true != k | given = k)`` (default: zeros).
        rule: ``"bottom_k"`` (the ``k`` lowest scores; ties go to the lower class index) or
            ``"threshold"`` (every class whose score is below ``threshold``).
        k: number of weak classes for ``"bottom_k"``, in ``[0, C]``.
        threshold: score bound for ``"threshold"``, in [0, 1].

    Returns:
        :class:`WeakClassResult` on ``probs``' device.

    Raises:
        ValueError: on a bad rule, ``k``, ``threshold`` or mismatched shapes.

    Example:
        >>> r = weak_classes(labels, probs, flags=flags, k=2)  # doctest: +SKIP
        >>> r.weak.nonzero().flatten()  # doctest: +SKIP
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {list(RULES)}; got {rule!r}")
    probs = torch.as_tensor(probs)
    if probs.ndim != 2:
        raise ValueError(f"probs must have shape (N, C); got {tuple(probs.shape)}")
    n, c = probs.shape
    device = probs.device
    labels = torch.as_tensor(labels, device=device).long()
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) to match probs; got {tuple(labels.shape)}")
    if rule == "bottom_k":
        check_int("k", k, minimum=0, maximum=c, why="at most the number of classes")
    if rule == "threshold":
        check_float("threshold", threshold, low=0, high=1)
    if flags is None:
        keep = torch.ones(n, dtype=torch.bool, device=device)
    else:
        keep = ~torch.as_tensor(flags, device=device).bool()
        if keep.shape != (n,):
            raise ValueError(f"flags must have shape ({n},); got {tuple(keep.shape)}")
    if class_noise_rate is None:
        noise = torch.zeros(c, device=device)
    else:
        noise = torch.as_tensor(class_noise_rate, device=device).float()
        if noise.shape != (c,):
            raise ValueError(f"class_noise_rate must have shape ({c},); got {tuple(noise.shape)}")
    recall = class_recall(labels, probs, keep)
    remaining = torch.bincount(labels[keep], minlength=c)
    ref = remaining.float().median().clamp_min(1)
    enough = (remaining.float() / ref).clamp(max=1.0)
    score = torch.nan_to_num(recall, nan=0.0) * (1 - noise.clamp(0, 1)) * enough
    if rule == "bottom_k":
        order = torch.argsort(score, stable=True)
        weak = torch.zeros(c, dtype=torch.bool, device=device)
        weak[order[: int(k)]] = True
    else:
        weak = score < float(threshold)
    return WeakClassResult(weak, score, recall, noise, remaining)
