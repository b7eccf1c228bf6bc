"""Small networks for the embedded data; any ``nn.Module`` factory works in their place."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn


class MLP(nn.Sequential):
    """Flatten, then ``Linear-ReLU`` blocks, then a linear classifier.

    Args:
        in_shape: shape of one input, e.g. ``(1, 8, 8)``.
        num_classes: C.
        hidden: widths of the hidden layers.
        dropout: dropout after each hidden layer.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        num_classes: int,
        hidden: Sequence[int] = (256, 128),
        dropout: float = 0.0,
    ) -> None:
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(in_shape)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)

    def embed(self, x):
        """Penultimate features (the input of the last linear layer): ``(B, ...) -> (B, D)``."""
        for layer in list(self)[:-1]:  # (self[:-1] would rebuild an MLP)
            x = layer(x)
        return x


class SmallCNN(nn.Module):
    """Three 3x3 conv blocks with pooling, then a two-layer head.

    Sized for small images (8x8 digits up to 32x32). ``batch_norm=True`` adds
    BatchNorm, which the fold-parallel module runs replica by replica when
    ``torch.func.vmap`` cannot batch it.

    Args:
        in_channels: channels of the input image.
        num_classes: C.
        width: channels of the first block (doubled in the second and third).
        batch_norm: add BatchNorm2d after each convolution.
        dropout: dropout before the classifier.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        width: int = 32,
        batch_norm: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1)]
            if batch_norm:
                layers.append(nn.BatchNorm2d(cout))
            return layers + [nn.ReLU()]

        self.features = nn.Sequential(
            *block(in_channels, width),
            *block(width, 2 * width),
            nn.MaxPool2d(2),
            *block(2 * width, 2 * width),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )
        self.head = nn.Sequential(
            nn.Linear(8 * width, 128),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(128, num_classes),
        )

    def forward(self, x):
        return self.head(self.features(x))

    def embed(self, x):
        """Penultimate features (the input of the last linear layer): ``(B, ...) -> (B, 128)``."""
        return self.head[:-1](self.features(x))
