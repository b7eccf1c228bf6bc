"""Deliberately broken or limited networks for end-to-end tests (importable by Hydra from
tests/)."""

import torch
from torch import nn


class ConstantNet(nn.Module):
    """Logits that ignore the input: every replica gives one output for every sample."""

    def __init__(self, in_shape, num_classes, **_):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def forward(self, x):
        return self.bias.expand(x.shape[0], -1) + 0.0 * x.flatten(1)[:, :1]


class NoLinearNet(nn.Module):
    """A linear classifier written without ``nn.Linear`` and without a ``features`` hook: a
    net that offers dcloop no embedding (``dcloop.health.features.NoEmbedding``)."""

    def __init__(self, in_shape, num_classes, **_):
        super().__init__()
        size = int(torch.tensor(in_shape).prod())
        self.weight = nn.Parameter(torch.randn(size, num_classes) * 0.01)
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def forward(self, x):
        return x.flatten(1) @ self.weight + self.bias
