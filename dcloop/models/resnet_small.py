"""A small ResNet for 32x32 images that trains on a CPU in minutes.

:class:`ResNetSmall` is the CIFAR ResNet of He et al. (2016): a 3x3 stem, three stages of
basic blocks at widths ``w, 2w, 4w`` (the second and third stages halve the resolution),
global average pooling and a linear head. ``blocks=(3, 3, 3)`` with ``width=16`` is
ResNet-20; the default ``blocks=(1, 1, 1)`` is ResNet-8. It has BatchNorm, and runs
vectorised (``torch.func.vmap``) in :class:`~dcloop.models.FoldEnsemble`: the K replicas'
running statistics are stacked ``(K, C)`` buffers and each replica updates its own slice.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dcloop._checks import check_int


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and a residual connection.

    The shortcut is the identity, or a strided 1x1 convolution with BatchNorm when the
    block changes the width or the resolution.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNetSmall(nn.Module):
    """CIFAR-style ResNet: 3x3 stem, three stages of basic blocks, average pool, linear head.

    Args:
        in_channels: channels of the input image.
        num_classes: C.
        width: channels of the stem and the first stage (the second and third have
            ``2 * width`` and ``4 * width``).
        blocks: basic blocks per stage, three numbers; ``(1, 1, 1)`` is ResNet-8,
            ``(3, 3, 3)`` ResNet-20.
        zero_init_residual: start each block's last BatchNorm at zero, so every block
            begins as the identity (often helps short schedules).

    Example:
        >>> net = ResNetSmall(3, 10, width=16)
        >>> net(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        width: int = 16,
        blocks: Sequence[int] = (1, 1, 1),
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        check_int("in_channels", in_channels, minimum=1)
        check_int("num_classes", num_classes, minimum=2)
        check_int("width", width, minimum=1)
        blocks = tuple(blocks)
        if len(blocks) != 3 or any(
            isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in blocks
        ):
            raise ValueError(
                f"blocks must be three integers >= 1 (blocks per stage); got {list(blocks)}"
            )
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        )
        stages: list[nn.Module] = []
        cin = width
        for i, n in enumerate(blocks):
            cout = width * 2**i
            layers = [BasicBlock(cin, cout, stride=1 if i == 0 else 2)]
            layers += [BasicBlock(cout, cout) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layers))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (the head's input): ``(B, C, H, W) -> (B, 4 * width)``."""
        return self.pool(self.stages(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))
