"""Named image augmentations (albumentations) at levels from mild to strong.

Level 0 is no augmentation; levels ``1..num_levels`` interpolate each op's magnitude
linearly from its mild to its strong setting (:data:`IMAGE_OPS`). Images are float32
tensors ``(C, H, W)`` in ``[0, 1]`` (every dcloop image source yields that range); the
output has the same shape, dtype and range.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from dcloop._checks import check_float, check_int

log = logging.getLogger(__name__)

#: op name -> (mild, strong) magnitude and what it means.
IMAGE_OPS: dict[str, tuple[float, float, str]] = {
    "gaussian_noise": (0.03, 0.15, "std of additive Gaussian noise, as a fraction of the range"),
    "rotate": (6.0, 25.0, "rotation, degrees either way"),
    "translate": (0.05, 0.25, "translation, fraction of the side either way (>= 1.5 px)"),
    "scale": (0.05, 0.25, "homothety: zoom factor in [1 - m, 1 + m]"),
    "crop": (0.1, 0.4, "random crop of area in [1 - m, 1], resized back (>= 1 px lost)"),
    "elastic": (0.5, 2.0, "elastic transform, displacement alpha in pixels"),
    "grid_distortion": (0.05, 0.3, "grid distortion limit"),
}


def magnitude(op: str, level: int, num_levels: int) -> float:
    """The magnitude of ``op`` at ``level`` (1 = mild ... ``num_levels`` = strong); 0 at level 0."""
    if op not in IMAGE_OPS:
        raise ValueError(f"image op must be one of {list(IMAGE_OPS)}; got {op!r}")
    if not 0 <= level <= num_levels:
        raise ValueError(f"level must be in [0, {num_levels}]; got {level}")
    if level == 0:
        return 0.0
    mild, strong, _ = IMAGE_OPS[op]
    t = 0.0 if num_levels == 1 else (level - 1) / (num_levels - 1)
    return mild + t * (strong - mild)


def _op(name: str, m: float, size: tuple[int, int], p: float):
    import albumentations as A

    if name == "gaussian_noise":
        return A.GaussNoise(std_range=(m / 2, m), p=p)
    if name == "rotate":
        return A.Rotate(limit=(-m, m), border_mode=0, fill=0, p=p)
    if name == "translate":  # albumentations shifts by whole pixels: reach >= 1.5 px
        m = max(m, 1.5 / min(size))
        return A.Affine(translate_percent=(-m, m), border_mode=0, fill=0, p=p)
    if name == "scale":
        return A.Affine(scale=(1 - m, 1 + m), border_mode=0, fill=0, p=p)
    if name == "crop":  # whole pixels again: allow losing at least one row/column
        m = max(m, 1 - ((min(size) - 1) / min(size)) ** 2)
        return A.RandomResizedCrop(size=size, scale=(1 - m, 1.0), ratio=(0.9, 1.1), p=p)
    if name == "elastic":
        return A.ElasticTransform(alpha=m, sigma=max(1.0, min(size) / 8), border_mode=0, p=p)
    return A.GridDistortion(num_steps=4, distort_limit=(-m, m), border_mode=0, p=p)


class ImageAugment:
    """The configured ops at one level, as a callable on ``(C, H, W)`` float tensors.

    Args:
        ops: names from :data:`IMAGE_OPS`, applied in this order.
        level: in ``[1, num_levels]``.
        num_levels: L, the strongest level.
        p: probability that each op is applied.
        size: ``(H, W)`` of the images (the crop is resized back to it).

    Call it as ``aug(x, seed)``: the same ``(x, seed)`` gives the same output; ``seed=None``
    draws from the process's generator.
    """

    def __init__(
        self,
        ops: Sequence[str],
        level: int,
        num_levels: int,
        *,
        p: float = 0.5,
        size: tuple[int, int],
    ) -> None:
        import albumentations as A

        check_ops(ops, IMAGE_OPS, "image")
        check_int("level", level, minimum=1, maximum=num_levels)
        check_float("p", p, low=0, high=1)
        self.ops, self.level, self.p = list(ops), int(level), float(p)
        self.magnitudes = {op: magnitude(op, level, num_levels) for op in ops}
        size = (int(size[0]), int(size[1]))
        self.compose = A.Compose([_op(o, self.magnitudes[o], size, p) for o in ops], seed=0)

    def __call__(self, x: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        if x.ndim != 3:
            raise ValueError(f"image augmentation expects (C, H, W); got shape {tuple(x.shape)}")
        seed = int(torch.randint(0, 2**31 - 1, ()).item()) if seed is None else int(seed)
        self.compose.set_random_seed(seed)
        img = np.ascontiguousarray(x.detach().cpu().numpy().transpose(1, 2, 0), dtype=np.float32)
        out = self.compose(image=img)["image"]
        if out.ndim == 2:
            out = out[:, :, None]
        out = torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))
        return out.clamp_(0.0, 1.0).to(dtype=x.dtype)


def check_ops(ops: Sequence[str], known, kind: str) -> None:
    """Raise ``ValueError`` naming any op not in ``known``."""
    if isinstance(ops, str):
        raise ValueError(f"{kind} ops must be a list of names, e.g. [{ops!r}]; got a string")
    bad = [o for o in ops if o not in known]
    if bad:
        raise ValueError(f"unknown {kind} op(s) {bad}; choose from {list(known)}")


def image_transforms(
    ops: Sequence[str], num_levels: int, *, p: float = 0.5, size: tuple[int, int]
) -> list[ImageAugment | None]:
    """One transform per level: ``[None, level 1, ..., level num_levels]``."""
    if num_levels < 1:
        raise ValueError(f"levels must be >= 1; got {num_levels}")
    return [None] + [
        ImageAugment(ops, lvl, num_levels, p=p, size=size) for lvl in range(1, num_levels + 1)
    ]
