"""Early-learning regularisation (ELR, Liu et al., NeurIPS 2020) for one or K networks.

A network fits clean labels first and memorises wrong ones later. ELR keeps, per sample, a
running average ``t_i`` of the network's own (detached) predictions and adds to the loss

    lam * log(1 - <t_i, p_i>)

which pulls the prediction ``p_i`` towards its early-learning target and so away from a wrong
label the network would otherwise memorise. With K fold replicas each replica keeps its own
targets (a ``(K, N, C)`` buffer); a row enters replica k's average only when replica k trains
on it (not its held-out fold, not a pruned row), so the loop over replicas and the vmapped
pass update the same entries.

As ``model.elr``: ``{lam: 3.0, beta: 0.7}`` (the paper's CIFAR-10 values; ``lam: 0`` or null:
off). The buffer is part of the module's state: checkpoints carry it and a resumed run goes on
with the same targets.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from dcloop.errors import UserInputError

# The (K, N, C) float32 targets live on the training device; refuse sizes that would not fit.
MAX_BYTES = 4 * 1024**3


def check_options(elr: Any) -> dict[str, float] | None:
    """``model.elr`` as ``{"lam": float, "beta": float}``, or ``None`` when off."""
    if elr is None or elr is False:
        return None
    if not isinstance(elr, Mapping):
        raise UserInputError(
            f"model.elr must be a mapping like {{lam: 3.0, beta: 0.7}} or null; got {elr!r}"
        )
    unknown = sorted(set(elr) - {"lam", "beta"})
    if unknown:
        raise UserInputError(f"model.elr has unknown keys {unknown}; it takes lam and beta")
    lam, beta = elr.get("lam", 3.0), elr.get("beta", 0.7)
    for name, value in (("lam", lam), ("beta", beta)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserInputError(f"model.elr.{name} must be a number; got {value!r}")
    if lam < 0:
        raise UserInputError(f"model.elr.lam must be >= 0 (0: off); got {lam!r}")
    if not 0.0 <= beta < 1.0:
        raise UserInputError(f"model.elr.beta must be in [0, 1); got {beta!r}")
    return None if lam == 0 else {"lam": float(lam), "beta": float(beta)}


class EarlyLearning(nn.Module):
    """ELR's targets and penalty for ``replicas`` networks over ``num_samples`` samples.

    Args:
        num_samples: N, the training set's size (sample indices are rows of the buffer).
        num_classes: C.
        replicas: K networks, each with its own targets (1 for a single network).
        lam: weight of the penalty.
        beta: momentum of the running average (the paper: 0.7 on CIFAR-10, 0.9 on CIFAR-100).
    """

    def __init__(
        self,
        num_samples: int,
        num_classes: int,
        *,
        replicas: int = 1,
        lam: float = 3.0,
        beta: float = 0.7,
    ) -> None:
        super().__init__()
        size = int(replicas) * int(num_samples) * int(num_classes) * 4
        if size > MAX_BYTES:
            raise UserInputError(
                f"model.elr keeps {replicas} x {num_samples} x {num_classes} running targets "
                f"({size / 1024**3:.1f} GiB), more than the {MAX_BYTES / 1024**3:.0f} GiB "
                "dcloop allows on the device: set model.elr=null, or use fewer folds"
            )
        self.lam, self.beta = float(lam), float(beta)
        self.register_buffer("targets", torch.zeros(int(replicas), int(num_samples), num_classes))

    def penalty(
        self,
        logits: torch.Tensor,
        index: torch.Tensor,
        replica: int | None = None,
        train: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-sample ``lam * log(1 - <t, p>)``; updates the running targets first.

        Args:
            logits: ``(K, B, C)`` of all replicas (``replica=None``), or ``(B, C)`` of one.
            index: ``(B,)`` sample indices.
            replica: which replica's targets ``(B, C)`` logits belong to.
            train: ``(K, B)`` (or ``(B,)``) bool, the rows each replica trains on; only those
                enter its average (``None``: all rows).

        Returns:
            ``(K, B)`` or ``(B,)``, same leading shape as ``logits`` without the classes.
        """
        single = logits.ndim == 2
        if single:
            logits = logits.unsqueeze(0)
            if train is not None:
                train = train.unsqueeze(0)
        rows = slice(None) if replica is None else slice(replica, replica + 1)
        p = logits.float().softmax(-1).clamp(1e-4, 1.0 - 1e-4)
        with torch.no_grad():
            old = self.targets[rows, index]  # (K, B, C)
            fresh = p.detach()
            new = self.beta * old + (1.0 - self.beta) * fresh / fresh.sum(-1, keepdim=True)
            if train is not None:
                new = torch.where(train.unsqueeze(-1), new, old)
            self.targets[rows, index] = new
        out = self.lam * (1.0 - (new * p).sum(-1)).log()
        return out.squeeze(0) if single else out


def reconcile_checkpoint(elr: EarlyLearning | None, state: dict[str, Any], name: str) -> None:
    """Make a checkpoint's ``state_dict`` fit a module whose ``model.elr`` setting changed.

    A checkpoint without ELR's targets resumed with ELR on starts them at zero; one with
    them resumed with ELR off drops them. Either way the resumed run differs from an
    uninterrupted one, and a warning says so.
    """
    from lightning.pytorch.utilities import rank_zero_warn

    key = "elr.targets"
    if not state:
        return
    if elr is not None and key not in state:
        state[key] = elr.targets.detach().clone()
        rank_zero_warn(
            f"{name} was written without model.elr: its running targets start from zero, so "
            "the resumed run differs from an uninterrupted one"
        )
    elif elr is None and key in state:
        del state[key]
        rank_zero_warn(
            f"{name} was written with model.elr, this run has it off: its running targets are "
            "dropped, so the resumed run differs from an uninterrupted one"
        )
