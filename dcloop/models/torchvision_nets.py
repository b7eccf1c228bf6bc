"""torchvision classifiers (never downloaded) sized for the run's data.

:func:`torchvision_net` builds ``resnet18/34/50``, ``wide_resnet50_2``, ``mobilenet_v3_small``
or ``efficientnet_b0`` with the run's class count, a first convolution for the data's channel
count, and optionally a CIFAR stem for 32x32 inputs. All six run vectorised
(``torch.func.vmap``) in :class:`~dcloop.models.FoldEnsemble`, BatchNorm included: the
replicas' running statistics are stacked ``(K, C)`` buffers, so vmap updates each replica's
own slice in place. EfficientNet's stochastic depth is swapped for a vmap-safe equivalent
(same distribution, same draws when run replica by replica).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Literal

import torch
from torch import nn

log = logging.getLogger(__name__)

NETS = (
    "resnet18",
    "resnet34",
    "resnet50",
    "wide_resnet50_2",
    "mobilenet_v3_small",
    "efficientnet_b0",
)
Norm = Literal["batch", "group"]


def torchvision_net(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    *,
    cifar_stem: bool = False,
    norm: Norm = "batch",
    weights_path: str | Path | None = None,
    **kwargs,
) -> nn.Module:
    """A torchvision classifier with random (or local) weights, adapted to the data.

    Args:
        name: one of ``NETS``.
        num_classes: C, the size of the classifier head.
        in_channels: channels of the input; the first convolution is rebuilt for it.
        cifar_stem: for small (32x32) images: a 3x3 stride-1 first convolution and no
            max-pool (ResNets), or a stride-1 first convolution (MobileNet, EfficientNet),
            so the feature maps are not reduced to 1x1 by the stem.
        norm: ``"batch"`` (torchvision's BatchNorm) or ``"group"`` (GroupNorm with up to 32
            groups: no running statistics, and no dependence on the other samples of a batch).
        weights_path: a local ``state_dict`` file (``torch.save(model.state_dict())``), read
            with ``weights_only=True``. Tensors whose shape does not fit (the head, an adapted
            stem) keep their fresh initialisation and are logged. Nothing is downloaded.
        **kwargs: passed to the torchvision constructor (e.g. ``dropout``, ``zero_init_residual``).

    Returns:
        The network, mapping ``(B, in_channels, H, W)`` to ``(B, num_classes)`` logits.

    Example:
        >>> net = torchvision_net("resnet18", 10, cifar_stem=True)
        >>> net(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    import torchvision.models as tvm

    if name not in NETS:
        raise ValueError(f"name must be one of {', '.join(NETS)}; got {name!r}")
    if norm not in ("batch", "group"):
        raise ValueError(f"norm must be 'batch' or 'group'; got {norm!r}")
    if int(num_classes) < 2 or int(in_channels) < 1:
        raise ValueError(
            f"need num_classes >= 2 and in_channels >= 1; got {num_classes}, {in_channels}"
        )
    if kwargs.get("weights") is not None:
        raise ValueError(
            "dcloop never downloads weights: use weights_path=<a local state_dict file>"
        )
    kwargs.pop("weights", None)
    if norm == "group":
        kwargs["norm_layer"] = _group_norm
    net = getattr(tvm, name)(weights=None, num_classes=int(num_classes), **kwargs)
    if name.startswith(("resnet", "wide_resnet")):
        _adapt_resnet(net, int(in_channels), cifar_stem)
    else:
        _adapt_first_conv(net.features[0], int(in_channels), cifar_stem)
    if name.startswith("efficientnet"):
        _vmap_safe_stochastic_depth(net)
    if weights_path is not None:
        load_matching(net, weights_path)
    return net


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)


def _adapt_resnet(net: nn.Module, in_channels: int, cifar_stem: bool) -> None:
    old = net.conv1
    if cifar_stem:
        net.conv1 = nn.Conv2d(in_channels, old.out_channels, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != old.in_channels:
        net.conv1 = nn.Conv2d(in_channels, old.out_channels, 7, stride=2, padding=3, bias=False)
    if net.conv1 is not old:
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")


def _adapt_first_conv(block: nn.Sequential, in_channels: int, cifar_stem: bool) -> None:
    old = block[0]
    if in_channels == old.in_channels and not cifar_stem:
        return
    block[0] = nn.Conv2d(
        in_channels,
        old.out_channels,
        old.kernel_size,
        stride=1 if cifar_stem else old.stride,
        padding=old.padding,
        bias=old.bias is not None,
    )
    nn.init.kaiming_normal_(block[0].weight, mode="fan_out")


class VmapStochasticDepth(nn.Module):
    """torchvision's ``StochasticDepth`` whose noise is drawn with ``empty_like``.

    torchvision draws into a fresh ``torch.empty`` tensor, which ``torch.func.vmap``
    (``randomness="different"``) refuses to fill in place; ``empty_like`` of the input
    is batched under vmap, so each replica draws its own noise. Outside vmap the draws
    are the same as torchvision's (same shape, same generator calls).
    """

    def __init__(self, p: float, mode: str) -> None:
        super().__init__()
        self.p, self.mode = float(p), mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        survival = 1.0 - self.p
        index = (slice(None) if self.mode == "row" else slice(0, 1),) + (slice(0, 1),) * (
            x.ndim - 1
        )
        noise = torch.empty_like(x[index]).bernoulli_(survival)
        if survival > 0.0:
            noise.div_(survival)
        return x * noise

    def extra_repr(self) -> str:
        return f"p={self.p}, mode={self.mode}"


def _vmap_safe_stochastic_depth(net: nn.Module) -> None:
    from torchvision.ops import StochasticDepth

    for parent in net.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, StochasticDepth):
                setattr(parent, child_name, VmapStochasticDepth(child.p, child.mode))


def load_matching(net: nn.Module, path: str | Path) -> list[str]:
    """Load the tensors of a local ``state_dict`` file that fit ``net``; return the skipped keys.

    Raises:
        FileNotFoundError: naming ``path``.
        ValueError: when no tensor of the file fits (another architecture).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"weights_path {str(path)!r} does not exist (nothing is downloaded)"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    own = net.state_dict()
    fits = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if not fits:
        raise ValueError(
            f"no tensor of {str(path)!r} fits {type(net).__name__}: another architecture?"
        )
    skipped = sorted(set(own) - set(fits))
    net.load_state_dict(fits, strict=False)
    if skipped:
        log.info("%s: kept the fresh initialisation of %s", path.name, ", ".join(skipped))
    return skipped
