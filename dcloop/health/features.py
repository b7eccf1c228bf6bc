"""A network's penultimate embedding, from the forward pass that gives its logits.

The hook a user's network can offer, in order of preference:

1. ``forward(x)`` returns ``(logits, features)``: both from one pass;
2. a ``features(x)`` method (or ``embed(x)``, the discrepancy maps' older name) returning
   ``(B, D)``: called beside ``forward`` (one more pass through the trunk);
3. neither: the input of the network's last ``nn.Linear`` layer, caught by a forward
   pre-hook during the ordinary forward pass (no extra cost; the head must be the last
   ``nn.Linear`` that the network registers).

A hook that returns the wrong shape is one clear error naming the network and the shape.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from dcloop.errors import UserInputError


def _check(net: nn.Module, feats: Any, batch: int, where: str) -> torch.Tensor:
    if not isinstance(feats, torch.Tensor) or feats.ndim < 2 or feats.shape[0] != batch:
        shape = tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__
        raise UserInputError(
            f"{type(net).__name__}.{where} gave features of shape {shape} for a batch of "
            f"{batch}; expected ({batch}, D)"
        )
    return feats.flatten(1)


class NoEmbedding(UserInputError):
    """The network offers no embedding hook and has no ``nn.Linear`` head: the OOF pass
    goes on without embeddings (data health is then skipped), as for a net with none."""


def _last_linear(net: nn.Module) -> nn.Linear:
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise NoEmbedding(
            f"{type(net).__name__} has no features(x) method, does not return (logits, "
            "features) and has no nn.Linear head; add features(x) returning (B, D)"
        )
    return linears[-1]


class Outputs(nn.Module):
    """``(logits, features)`` of ``net`` (see the module doc); a module, so that
    ``functional_call`` can run it with one fold replica's parameters."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        net = self.net
        hook = getattr(net, "features", None) or getattr(net, "embed", None)
        if callable(hook) and not isinstance(hook, nn.Module):
            out = net(x)
            logits = out[0] if isinstance(out, (tuple, list)) else out
            name = "features(x)" if callable(getattr(net, "features", None)) else "embed(x)"
            return logits, _check(net, hook(x), x.shape[0], name)
        seen: list[torch.Tensor] = []
        handle = _last_linear(net).register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
        try:
            out = net(x)
        finally:
            handle.remove()
        if isinstance(out, (tuple, list)):
            if len(out) != 2:
                raise UserInputError(
                    f"{type(net).__name__}.forward returned {len(out)} outputs; expected "
                    "logits or (logits, features)"
                )
            return out[0], _check(net, out[1], x.shape[0], "forward(x)[1]")
        return out, _check(net, seen[-1], x.shape[0], "last nn.Linear input")


def outputs(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits (B, C), features (B, D))`` of ``net`` on ``x``."""
    return Outputs(net)(x)


def replica_outputs(
    net: nn.Module,
    params: dict[str, torch.Tensor],
    buffers: dict[str, torch.Tensor],
    x: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`outputs` of ``net`` run with the given parameters and buffers (one replica)."""
    p = {"net." + n: v for n, v in params.items()}
    b = {"net." + n: v for n, v in buffers.items()}
    return functional_call(Outputs(net), (p, b), (x,))
