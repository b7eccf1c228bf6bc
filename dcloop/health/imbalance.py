"""Class imbalance: the rarest class, when far rarer than a uniform share (Datalab's rule).

The rarest class is flagged when its share of the samples is below ``threshold / C``
(Datalab's default ``threshold = 0.1``); its samples are the flagged ones.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from dcloop._checks import check_float, check_num_classes
from dcloop.health._inputs import as_labels


class Imbalance(NamedTuple):
    """``counts (C,)``, ``share (C,)``, ``rarest`` class, ``imbalanced`` whether it is
    flagged, ``flags (N,)`` its samples when it is."""

    counts: torch.Tensor
    share: torch.Tensor
    rarest: int
    imbalanced: bool
    flags: torch.Tensor


def class_imbalance(labels: Any, num_classes: int, *, threshold: float = 0.1) -> Imbalance:
    """The rarest class and whether its share is below ``threshold / num_classes``.

    Example:
        >>> r = class_imbalance(torch.tensor([0] * 98 + [1] * 2 + [2] * 100), 3)
        >>> r.rarest, r.imbalanced
        (1, True)
    """
    check_num_classes(num_classes)
    check_float("threshold", threshold, low=0.0, high=1.0)
    y = torch.as_tensor(labels)
    y = as_labels(y, y.shape[0] if y.ndim == 1 else -1)
    counts = torch.bincount(y, minlength=num_classes)
    share = counts.double() / max(y.numel(), 1)
    present = counts > 0  # Datalab's rarest class is among the classes that occur
    masked = torch.where(present, share, torch.full_like(share, 2.0))
    rarest = int(masked.argmin())
    imbalanced = bool(share[rarest] < threshold / num_classes)
    flags = (y == rarest) & imbalanced
    return Imbalance(counts, share.float(), rarest, imbalanced, flags)
