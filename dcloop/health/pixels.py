"""A pixel signal for near-duplicate images, computed on the decoded images (no training).

A weak model's embedding may not tell a colour-shifted or slightly moved copy from a
look-alike; the pixels do. Two stages:

1. :func:`pixel_signature`: each image area-downsampled to ``size x size`` and standardised
   per channel (mean 0, std 1: brightness, contrast and colour casts drop out), flattened.
   Candidates are the ``candidates`` nearest training images by euclidean distance.
2. :func:`aligned_distance`: each candidate pair compared on the central ``crop x crop``
   window, standardised per channel, at every integer shift up to ``max_shift`` pixels; the
   pair's distance is the smallest mean squared difference (translations in the copy cost
   nothing).

:func:`pixel_leakage` ranks each query image's best candidate by its aligned distance and by
the ratio best / second best, as :func:`~dcloop.health.duplicates.find_leakage` does for
embeddings.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from dcloop._checks import check_int
from dcloop.errors import UserInputError
from dcloop.health.knn import knn


class PixelPairs(NamedTuple):
    """Per query image: ``reference (M,)`` best match, ``distance (M,)`` aligned distance,
    ``ratio (M,)`` best / second best aligned distance."""

    reference: torch.Tensor
    distance: torch.Tensor
    ratio: torch.Tensor


def _images(x: Any, name: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.ndim != 4:
        raise UserInputError(f"{name} must be images (N, C, H, W); got shape {tuple(t.shape)}")
    t = t.float()
    if not bool(torch.isfinite(t).all()):
        raise UserInputError(f"{name} hold NaN or inf values; expected finite pixels")
    return t


def _standardise(t: torch.Tensor) -> torch.Tensor:
    t = t - t.mean((-2, -1), keepdim=True)
    return t / (t.flatten(-2).std(-1)[..., None, None] + 1e-2)


def pixel_signature(images: Any, *, size: int = 8) -> torch.Tensor:
    """``(N, C*size*size)`` per-channel standardised thumbnails of ``(N, C, H, W)`` images."""
    t = _images(images, "images")
    check_int("size", size, minimum=1)
    small = F.interpolate(t, size=(size, size), mode="area")
    return _standardise(small).flatten(1)


def aligned_distance(
    query: Any, reference: Any, candidates: torch.Tensor, *, crop: int = 24, max_shift: int = 3
) -> torch.Tensor:
    """``(M, k)`` smallest mean squared difference of standardised central crops over shifts.

    Args:
        query: ``(M, C, H, W)`` images.
        reference: ``(N, C, H, W)`` images of the same size.
        candidates: ``(M, k)`` indices into ``reference``.
        crop: side of the compared window (centred in the query).
        max_shift: largest shift in pixels, each direction.
    """
    q, r = _images(query, "query images"), _images(reference, "reference images")
    if q.shape[1:] != r.shape[1:]:
        raise UserInputError(
            f"query and reference images must have one size; got {tuple(q.shape[1:])} and "
            f"{tuple(r.shape[1:])}"
        )
    h, w = q.shape[-2:]
    check_int("crop", crop, minimum=1, maximum=min(h, w))
    check_int("max_shift", max_shift, minimum=0, maximum=(min(h, w) - crop) // 2)
    y0, x0 = (h - crop) // 2, (w - crop) // 2
    r = r.to(q.device)
    candidates = candidates.to(q.device)
    best = torch.full(candidates.shape, float("inf"), device=q.device)
    step = max(1, (1 << 22) // max(candidates.shape[1] * q[0].numel(), 1))
    for s in range(0, q.shape[0], step):
        qc = _standardise(q[s : s + step, :, y0 : y0 + crop, x0 : x0 + crop])[:, None]
        rc = r[candidates[s : s + step]]  # (m, k, C, H, W)
        for dy in range(-max_shift, max_shift + 1):
            for dx in range(-max_shift, max_shift + 1):
                win = rc[..., y0 + dy : y0 + dy + crop, x0 + dx : x0 + dx + crop]
                d = ((qc - _standardise(win)) ** 2).flatten(2).mean(-1)
                best[s : s + step] = torch.minimum(best[s : s + step], d)
    return best


def pixel_leakage(
    query: Any,
    reference: Any = None,
    *,
    candidates: int = 10,
    size: int = 8,
    crop: int = 24,
    max_shift: int = 3,
) -> PixelPairs:
    """Each query image's closest reference image by the pixel signal (see the module doc).

    Args:
        query: ``(M, C, H, W)`` images (e.g. the test set), values in any fixed range.
        reference: ``(N, C, H, W)`` images (e.g. the training set), ``N >= 2``; ``None``:
            the query images themselves, each image's own entry left out (near-duplicates
            inside one set).
        candidates: reference images compared at full resolution per query image.
        size: side of the signature thumbnails.
        crop, max_shift: of :func:`aligned_distance`.

    Returns:
        :class:`PixelPairs`.
    """
    q = _images(query, "query images")
    within = reference is None
    r = q if within else _images(reference, "reference images")
    k = min(candidates, r.shape[0] - (1 if within else 0))
    check_int("candidates", candidates, minimum=2)
    if k < 2:
        raise UserInputError(f"reference images need at least 2 rows; got {r.shape[0]}")
    sig = pixel_signature(q, size=size)
    cand = knn(sig, None if within else pixel_signature(r, size=size), k=k, metric="euclidean")
    cand = cand.index
    dist = aligned_distance(q, r, cand, crop=crop, max_shift=max_shift)
    dist, order = dist.sort(dim=1)
    best = cand.gather(1, order)[:, 0]
    return PixelPairs(best, dist[:, 0], dist[:, 0] / dist[:, 1].clamp_min(1e-12))
