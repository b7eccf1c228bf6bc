"""Mixup (Zhang et al., 2018) for one network: train on convex mixes of sample pairs.

A batch is mixed with its own random permutation: ``x' = lam * x + (1 - lam) * x[perm]``,
and the targets and per-sample weights the same way, with ``lam ~ Beta(alpha, alpha)`` drawn
once per batch. A wrong label then never gets a sample to itself, which slows its
memorisation (one of the ingredients of DivideMix and of its successors).

``model.mixup`` (``alpha``; 0: off) mixes the single networks of a run (the kept student,
``refit``, the folds of ``mode=sequential``); ``student.mixup`` the student alone. The K fold
replicas of ``mode=parallel`` do not mix: a mixed pair would put one replica's held-out sample
into its training loss.

Where the mixing happens (:func:`mix_point`): floating-point inputs (images, audio, features)
are mixed as they are; token ids (text nets) cannot be, and are mixed after the network's
``embed(x) -> (B, D)``, when it also has ``classify(z) -> (B, C)`` with ``forward(x) ==
classify(embed(x))`` (dcloop's text nets); other integer-input networks are refused.

Plain functions on tensors, tested without a Trainer (``tests/test_mixup.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from dcloop._checks import check_float
from dcloop.errors import UserInputError

#: Where :func:`mix_point` says a batch is mixed.
MIX_POINTS = ("input", "embedding")


def check_alpha(value: Any, name: str = "model.mixup") -> float:
    """``value`` as mixup's ``alpha`` (a finite number >= 0; 0: off).

    Raises:
        UserInputError: naming ``name`` and the value, e.g. ``model.mixup must be a number
            >= 0.0 ...; got model.mixup='x'``.
    """
    return check_float(name, value, low=0.0, why="the Beta(alpha, alpha) of mixup; 0: off")


def draw(
    n: int,
    alpha: float,
    *,
    weights: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[float, torch.Tensor]:
    """One batch's ``lam ~ Beta(alpha, alpha)`` and the partner of each row.

    Rows of weight 0 (pruned, or a sequential run's held-out fold) must not leak into the loss
    through a partner: the kept rows are permuted among themselves and every zero-weight row
    is its own partner (mixed with itself it stays as it was, and keeps weight 0). No host
    synchronisation: the permutation is built with two sorts on the weights' device.

    Args:
        n: the batch size.
        alpha: ``> 0``.
        weights: ``(n,)`` per-sample weights (``None``: all rows kept).
        generator: a CPU generator (the draws do not touch the global RNG).
        device: where ``perm`` goes (default: the weights' device, else the CPU).

    Returns:
        ``(lam, perm)``: a float in ``[0, 1]`` and ``(n,)`` long indices, a permutation.
    """
    seed = int(torch.randint(2**62, (1,), generator=generator))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    keys = torch.rand(n, generator=generator)
    if device is None:
        device = weights.device if weights is not None else torch.device("cpu")
    if weights is None:
        return lam, keys.argsort().to(device)
    keys, weights = keys.to(device), weights.to(device)
    rows = torch.arange(n, device=device)
    dropped = weights <= 0
    # kept rows first (by index / in random order), then the dropped ones by index: pairing
    # the two orders position by position permutes the kept rows and fixes the dropped ones
    by_index = torch.where(dropped, rows + n, rows).argsort()
    shuffled = torch.where(dropped, 2.0 + rows.float() / n, keys).argsort()
    perm = torch.empty_like(rows)
    perm[by_index] = shuffled
    return lam, perm


def mix(
    x: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor | None,
    lam: float,
    perm: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``lam * v + (1 - lam) * v[perm]`` for the inputs, targets and weights alike.

    Args:
        x: ``(B, ...)`` float inputs (or embeddings).
        targets: ``(B, C)`` target distributions (one-hot for hard labels).
        weights: ``(B,)`` per-sample weights or ``None``.
        lam, perm: from :func:`draw`.

    Returns:
        The mixed ``(x, targets, weights)``; rows still sum to 1 and, ``perm`` being a
        permutation, the weights keep their sum.
    """
    if targets.ndim != 2 or targets.shape[0] != x.shape[0]:
        raise ValueError(
            f"mixup needs (B, C) targets for a batch of {x.shape[0]}; got {tuple(targets.shape)}"
        )
    if not x.is_floating_point():
        raise ValueError(f"mixup needs floating-point inputs; got {x.dtype}")
    x = lam * x + (1.0 - lam) * x[perm]
    targets = lam * targets + (1.0 - lam) * targets[perm]
    if weights is not None:
        weights = lam * weights + (1.0 - lam) * weights[perm]
    return x, targets, weights


def as_distribution(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(B,)`` class ids or ``(B, C)`` distributions as ``(B, C)`` float distributions."""
    if targets.ndim == 1:
        return nn.functional.one_hot(targets.long(), num_classes).float()
    return targets.float()


def has_embedding_hook(net: nn.Module) -> bool:
    """Whether ``net`` has ``embed(x) -> (B, D)`` and ``classify(z) -> (B, C)`` methods."""
    return all(
        callable(getattr(net, name, None)) and not isinstance(getattr(net, name), nn.Module)
        for name in ("embed", "classify")
    )


def mix_point(net: nn.Module, example: torch.Tensor, name: str = "model.mixup") -> str:
    """Where a batch like ``example`` is mixed for ``net``: ``input`` or ``embedding``.

    Raises:
        UserInputError: integer inputs (token ids) and a network without the ``embed`` /
            ``classify`` pair: naming ``name``, the network and the fix.
    """
    if torch.as_tensor(example).is_floating_point():
        return "input"
    if has_embedding_hook(net):
        return "embedding"
    raise UserInputError(
        f"{name} mixes inputs, but this data gives {torch.as_tensor(example).dtype} inputs (token "
        f"ids cannot be mixed) and {type(net).__name__} has no embed(x) / classify(z) pair to mix "
        f"at the embedding: set {name}=0, or give the network both methods"
    )
