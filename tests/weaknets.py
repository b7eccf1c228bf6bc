"""Deliberately broken networks for the harm-guard tests (importable by Hydra from tests/)."""

import torch
from torch import nn


class ConstantNet(nn.Module):
    """Logits that ignore the input: every replica gives one output for every sample."""

    def __init__(self, in_shape, num_classes, **_):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def forward(self, x):
        return self.bias.expand(x.shape[0], -1) + 0.0 * x.flatten(1)[:, :1]
