"""The standard CIFAR training augmentation: a random crop of the padded image and a flip.

:class:`RandomCropFlip` is a per-item transform for the data module's ``train_transform``
(``data.train_transform`` in a config), so it runs on the training batches only, never on
the out-of-fold, validation or test passes::

    data:
      train_transform:
        _target_: dcloop.augment.crop_flip.RandomCropFlip
        padding: 4
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dcloop._checks import check_float, check_int


class RandomCropFlip:
    """Pad ``(C, H, W)`` by ``padding`` on each side, crop a random ``H x W`` window, and
    mirror it left-right with probability ``flip``.

    Random numbers come from torch's global generator (seeded per run and per DataLoader
    worker by Lightning), so a seeded run repeats. The output has the input's shape and
    dtype; the padding is ``fill``.

    Args:
        padding: pixels added on each side before cropping (0: no crop).
        flip: probability of the horizontal flip (0: never).
        fill: value of the padded pixels.

    Example:
        >>> t = RandomCropFlip(padding=4)
        >>> t(torch.rand(3, 32, 32)).shape
        torch.Size([3, 32, 32])
    """

    def __init__(self, padding: int = 4, flip: float = 0.5, fill: float = 0.0) -> None:
        self.padding = check_int("padding", padding, minimum=0)
        self.flip = check_float("flip", flip, low=0.0, high=1.0)
        self.fill = check_float("fill", fill)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 3:
            shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
            raise ValueError(f"RandomCropFlip takes one image (C, H, W) as a tensor; got {shape}")
        p = self.padding
        if p:
            h, w = x.shape[-2:]
            i, j = torch.randint(0, 2 * p + 1, (2,)).tolist()
            x = F.pad(x, (p, p, p, p), value=self.fill)[:, i : i + h, j : j + w]
        if self.flip and torch.rand(()).item() < self.flip:
            x = x.flip(-1)
        return x.contiguous()

    def __repr__(self) -> str:
        return f"RandomCropFlip(padding={self.padding}, flip={self.flip}, fill={self.fill})"
