"""Image properties for outliers, as cleanvision's image checks compute them (no training).

A pixel thumbnail (:func:`~dcloop.health.pixel_signature`) is standardised per image, so it
cannot see what makes many unwanted images unwanted: a dark frame, a grey scan among colour
photos, a blurred or a noisy picture. cleanvision (cleanlab's image-issue package,
``issue_managers/image_property.py``) scores each image on such properties. Here they are
the columns of one ``(N, P)`` feature matrix:

=========================  ===============================================================
column                     what
=========================  ===============================================================
``brightness``             cleanvision's perceived brightness of the channel means,
                           ``sqrt(0.241 R^2 + 0.691 G^2 + 0.068 B^2)``
``mean_c``, ``log_std_c``  per channel: mean and log standard deviation (contrast)
``entropy``                Shannon entropy (bits) of the grey image's 256-bin histogram
                           (cleanvision's "low information")
``saturation``             mean over pixels of ``max - min`` over channels (0: a grey image;
                           cleanvision's "grayscale")
``log_blur``               log variance of the grey image's Laplacian (cleanvision's
                           "blurry": variance of the edge image)
``high_frequency``         share of the grey image's variance left after a 3x3 box blur
                           (noise: near 1; smooth photos: small)
=========================  ===============================================================

:func:`robust_standardise` puts each column on one scale (median 0, IQR / 1.349 = 1), and
:func:`combine` weighs blocks of columns (the thumbnail, the properties, a network's
embedding) so that each block adds as much to a distance as any other, whatever its width.

Measured, not shipped as the run's outlier signal: on the CIFAR subset with 50 planted
outliers (25 noise images, 25 upscaled digits) Datalab's kNN rule on the thumbnail and these
properties together flagged none of them (each kind of plant is 25 images with nearly the
same properties: a group that its own 10 nearest neighbours hide), and a global distance
from the bulk (Mahalanobis) found all 50 among some 200 vivid, grey or dark CIFAR photos
(``scripts/results/bench_health_planted.md``, ``docs/health.md``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from dcloop.errors import UserInputError
from dcloop.health._inputs import as_features
from dcloop.health.pixels import _images, _unit_range

#: Rec. 601 luma weights (grey image), as PIL's ``convert("L")``.
LUMA = (0.299, 0.587, 0.114)

#: cleanvision's brightness weights of the squared channel means.
BRIGHTNESS = (0.241, 0.691, 0.068)


def property_names(channels: int) -> list[str]:
    """Column names of :func:`image_properties` for images of ``channels`` channels."""
    return [
        "brightness",
        *(f"mean_{c}" for c in range(channels)),
        *(f"log_std_{c}" for c in range(channels)),
        "entropy",
        "saturation",
        "log_blur",
        "high_frequency",
    ]


def _grey(t: torch.Tensor) -> torch.Tensor:
    if t.shape[1] == 3:
        w = torch.tensor(LUMA, dtype=t.dtype, device=t.device)
        return (t * w[None, :, None, None]).sum(1, keepdim=True)
    return t.mean(1, keepdim=True)


def _properties(t: torch.Tensor) -> torch.Tensor:
    """Properties of a chunk of images already on [0, 1] (see the module doc)."""
    n, c = t.shape[:2]
    mean = t.mean((-2, -1))
    if c == 3:
        w = torch.tensor(BRIGHTNESS, dtype=t.dtype, device=t.device)
        bright = (mean.square() * w).sum(1).sqrt()
    else:
        bright = mean.mean(1)
    log_std = torch.log(t.flatten(2).std(-1) + 1e-3)
    g = _grey(t)
    bins = (g.flatten(1) * 255).round().long().clamp(0, 255)
    hist = torch.zeros(n, 256, dtype=t.dtype, device=t.device)
    hist.scatter_add_(1, bins, torch.ones_like(bins, dtype=t.dtype))
    p = hist / hist.sum(1, keepdim=True)
    entropy = -(p * torch.log2(p.clamp_min(1e-12))).sum(1)
    sat = (t.amax(1) - t.amin(1)).flatten(1).mean(1)
    lap_k = torch.tensor([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=t.dtype, device=t.device)
    gp = F.pad(g, (1, 1, 1, 1), mode="replicate")
    lap = F.conv2d(gp, lap_k[None, None])
    log_blur = torch.log(lap.flatten(1).var(1) + 1e-6)
    smooth = F.avg_pool2d(gp, 3, stride=1)
    var = g.flatten(1).var(1)
    high = (g - smooth).flatten(1).var(1) / (var + 1e-6)
    cols = [bright[:, None], mean, log_std, entropy[:, None], sat[:, None]]
    return torch.cat([*cols, log_blur[:, None], high[:, None]], 1)


def image_properties(images: Any, *, chunk: int = 1024) -> torch.Tensor:
    """``(N, P)`` cleanvision-style properties of ``(N, C, H, W)`` images (module doc).

    The images are mapped together onto [0, 1] by their common min and max first (as the
    pixel signal does), so 0..255, 0..1 and normalised inputs give the same properties
    up to that map. Columns: :func:`property_names`.

    Args:
        images: ``(N, C, H, W)`` with ``H, W >= 3``, finite.
        chunk: images per step (bounds the memory of the histogram and filters).

    Example:
        >>> x = torch.rand(4, 3, 16, 16)
        >>> image_properties(x).shape
        torch.Size([4, 11])
    """
    (t,) = _unit_range(_images(images, "images"))
    if min(t.shape[-2:]) < 3:
        raise UserInputError(f"images must be at least 3x3 pixels; got {tuple(t.shape[-2:])}")
    return torch.cat([_properties(t[s : s + chunk]) for s in range(0, t.shape[0], chunk)])


def robust_standardise(x: Any, name: str = "features") -> torch.Tensor:
    """Each column minus its median, divided by its IQR / 1.349 (the standard deviation of
    a normal column; outliers do not inflate it as they inflate the standard deviation).
    A column with no spread (IQR 0) falls back to its standard deviation, and a constant
    column becomes 0."""
    t = as_features(x, name).double()
    med = t.median(0).values
    q = torch.quantile(t, torch.tensor([0.25, 0.75], dtype=t.dtype, device=t.device), dim=0)
    scale = (q[1] - q[0]) / 1.349
    flat = scale <= 1e-12
    scale = torch.where(flat, t.std(0), scale)
    scale = torch.where(scale <= 1e-12, torch.ones_like(scale), scale)
    return ((t - med) / scale).float()


def combine(*blocks: Any) -> torch.Tensor:
    """Blocks of ``(N, D_b)`` features side by side, each robustly standardised
    (:func:`robust_standardise`) and divided by ``sqrt(D_b)``: every block then adds about
    as much to a squared euclidean distance as any other, whatever its width (a 192-column
    thumbnail does not drown 11 properties)."""
    if not blocks:
        raise UserInputError("combine needs at least one block of features")
    out = [robust_standardise(b, f"block {i}") for i, b in enumerate(blocks)]
    rows = {b.shape[0] for b in out}
    if len(rows) != 1:
        raise UserInputError(f"blocks must have the same rows N; got {[b.shape[0] for b in out]}")
    return torch.cat([b / math.sqrt(b.shape[1]) for b in out], 1)
