"""A pixel signal for near-duplicate images, computed on the decoded images (no training).

A weak model's embedding may not tell a colour-shifted or slightly moved copy from a
look-alike; the pixels do. Two stages:

1. :func:`pixel_signature`: each image area-downsampled to ``size x size`` and standardised
   per channel (mean 0, std 1: brightness, contrast and colour casts drop out), flattened.
   Candidates are the ``candidates`` nearest training images by euclidean distance, each
   training image signed also moved by ``max_shift`` pixels in the 8 directions
   (:func:`shifted_candidates`): a move of most of a thumbnail cell otherwise pushes a copy
   out of the candidates (5 of 50 planted CIFAR copies at 10 candidates).
2. :func:`aligned_distance`: each candidate pair compared on the central ``crop x crop``
   window, standardised per channel, at every integer shift up to ``max_shift`` pixels; the
   pair's distance is the smallest mean squared difference (translations in the copy cost
   nothing).

:func:`pixel_leakage` ranks each query image's best candidate by its aligned distance and by
the ratio best / second best, as :func:`~dcloop.health.duplicates.find_leakage` does for
embeddings.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from dcloop._checks import check_float, check_int
from dcloop.errors import UserInputError
from dcloop.health.knn import Neighbours, knn


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


def _unit_range(*sets: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The image sets mapped together onto [0, 1] by their common min and max, so that the
    standardisation's floor (``+ 1e-2`` on the std) is the same share of the pixel range
    whether the images come as 0..255, 0..1 or normalised values."""
    lo = min(float(t.min()) for t in sets)
    hi = max(float(t.max()) for t in sets)
    scale = max(hi - lo, 1e-12)
    done: dict[int, torch.Tensor] = {}  # one copy of a set passed twice (inside one set)
    return tuple(done.setdefault(id(t), (t - lo) / scale) for t in sets)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """``(N, C, H, W)`` images blurred per channel by a separable Gaussian of ``sigma``
    pixels (radius ``ceil(3 sigma)``, borders replicated); ``sigma=0``: unchanged."""
    if sigma <= 0:
        return images
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=images.dtype, device=images.device)
    g = torch.exp(-(t * t) / (2 * sigma * sigma))
    g = g / g.sum()
    c = images.shape[1]
    x = F.pad(images, (r, r, r, r), mode="replicate")
    x = F.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _standardise(t: torch.Tensor) -> torch.Tensor:
    t = t - t.mean((-2, -1), keepdim=True)
    return t / (t.flatten(-2).std(-1)[..., None, None] + 1e-2)


def pixel_signature(images: Any, *, size: int = 8) -> torch.Tensor:
    """``(N, C*size*size)`` per-channel standardised thumbnails of ``(N, C, H, W)`` images."""
    (t,) = _unit_range(_images(images, "images"))
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

    All ``(2 max_shift + 1)^2`` shifts of a candidate come from one grouped correlation of
    its region with the standardised query crop and the windows' means and variances from
    box filters (``|a - b|^2 = |a|^2 + |b|^2 - 2 a.b``): the same distances as comparing
    every shifted, standardised window (to float32 rounding), 5.5x faster on one CPU thread
    (``scripts/results/bench_pixel_aligned.md``).
    """
    q, r = _unit_range(_images(query, "query images"), _images(reference, "reference images"))
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
    m, k = candidates.shape
    c, side, span = q.shape[1], crop * crop, 2 * max_shift + 1
    reach = crop + 2 * max_shift  # the candidate's region that any shifted window covers
    best = torch.empty(candidates.shape, device=q.device)
    step = max(1, (1 << 22) // max(k * c * reach * reach, 1))
    for s in range(0, m, step):
        qh = _standardise(q[s : s + step, :, y0 : y0 + crop, x0 : x0 + crop])  # (b, C, P)
        b = qh.shape[0]
        ys, xs = y0 - max_shift, x0 - max_shift
        reg = r[candidates[s : s + step]][..., ys : ys + reach, xs : xs + reach]
        # a constant per channel changes no standardised window; removing the region's mean
        # keeps the moments below (E[w^2] - E[w]^2) free of cancellation in float32
        reg = (reg - reg.mean((-2, -1), keepdim=True)).reshape(b * k * c, 1, reach, reach)
        # sum over the window of qh * w at every shift: one grouped correlation
        kernel = qh[:, None].expand(b, k, c, crop, crop).reshape(b * k * c, 1, crop, crop)
        cross = F.conv2d(reg.reshape(1, b * k * c, reach, reach), kernel, groups=b * k * c)
        mean = F.avg_pool2d(reg, crop, stride=1)
        var = (F.avg_pool2d(reg * reg, crop, stride=1) - mean * mean) * side / (side - 1)
        sd = var.clamp_min(0).sqrt() + 1e-2  # _standardise's (unbiased std + 1e-2)
        # |qh - wh|^2 = |qh|^2 + |wh|^2 - 2 qh.wh, with wh = (w - mean) / sd and sum(qh) = 0
        q2 = (qh * qh).flatten(2).sum(-1)[:, None, :, None, None]
        w2 = ((side - 1) * var.clamp_min(0) / sd**2).reshape(b, k, c, span, span)
        qw = (cross.reshape(b * k * c, 1, span, span) / sd).reshape(b, k, c, span, span)
        d = (q2 + w2 - 2 * qw).sum(2).flatten(2) / (c * side)
        best[s : s + step] = d.min(-1).values.clamp_min(0)
    return best


def _shift(t: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``t`` moved by ``(dy, dx)`` pixels, the uncovered border reflected."""
    if dy == 0 and dx == 0:
        return t
    p = max(abs(dy), abs(dx))
    h, w = t.shape[-2:]
    pad = F.pad(t, (p, p, p, p), mode="reflect" if p < min(h, w) else "replicate")
    return pad[..., p - dy : p - dy + h, p - dx : p - dx + w]


def shifted_candidates(
    query: Any, reference: Any = None, *, k: int = 10, size: int = 8, max_shift: int = 3
) -> torch.Tensor:
    """``(M, k)`` candidate references per query image, by signature distance tolerant to
    moves of up to ``max_shift`` pixels.

    A thumbnail of ``size x size`` changes when the image moves by a fraction of one of its
    cells, so a moved copy can fall out of the plain signature's nearest ``k`` (on the
    planted CIFAR copies, 5 of 50 moved by 1-3 px did at ``k = 10``). Here each reference
    image is also signed moved by ``max_shift`` pixels in each of the 8 directions (the
    moves :func:`aligned_distance` then undoes), and a reference's distance is the smallest
    over its 9 signatures. ``reference=None``: the query set itself, each image's own
    entry left out.
    """
    q = _images(query, "query images")
    within = reference is None
    r = q if within else _images(reference, "reference images")
    q, r = _unit_range(q, r)
    n = r.shape[0]
    check_int("k", k, minimum=1, maximum=n - (1 if within else 0))
    check_int("max_shift", max_shift, minimum=0)
    sig_q = pixel_signature(q, size=size)
    steps = sorted({-max_shift, 0, max_shift})
    moves = [(dy, dx) for dy in steps for dx in steps]
    dist, idx = [], []
    for dy, dx in moves:
        sig_r = pixel_signature(_shift(r, dy, dx), size=size)
        if within:  # leave-one-out: own entry (any move) is never a candidate
            nb = knn(sig_q, sig_r, k=min(k + 1, n), metric="euclidean")
            own = nb.index == torch.arange(q.shape[0], device=nb.index.device)[:, None]
            d = nb.distance.masked_fill(own, float("inf"))
            nb = Neighbours(d, nb.index)
        else:
            nb = knn(sig_q, sig_r, k=k, metric="euclidean")
        dist.append(nb.distance)
        idx.append(nb.index)
    dist, idx = torch.cat(dist, 1), torch.cat(idx, 1)
    dist, order = dist.sort(dim=1, stable=True)
    idx = idx.gather(1, order)
    # keep each reference's first (smallest) entry: a stable sort by index keeps the
    # distance order among equal indices, so a repeat is an entry equal to its predecessor
    by_index, pos = idx.sort(dim=1, stable=True)
    repeat_sorted = torch.zeros_like(by_index, dtype=torch.bool)
    repeat_sorted[:, 1:] = by_index[:, 1:] == by_index[:, :-1]
    repeat = torch.zeros_like(repeat_sorted).scatter_(1, pos, repeat_sorted)
    dist = dist.masked_fill(repeat, float("inf"))
    dist, order = dist.sort(dim=1, stable=True)
    return idx.gather(1, order)[:, :k]


def pixel_leakage(
    query: Any,
    reference: Any = None,
    *,
    candidates: int = 10,
    size: int = 8,
    crop: int = 24,
    max_shift: int = 3,
    blur: float = 0.0,
) -> PixelPairs:
    """Each query image's closest reference image by the pixel signal (see the module doc).

    Args:
        query: ``(M, C, H, W)`` images (e.g. the test set), values in any fixed range.
        reference: ``(N, C, H, W)`` images (e.g. the training set), ``N >= 2``; ``None``:
            the query images themselves, each image's own entry left out (near-duplicates
            inside one set).
        candidates: reference images compared at full resolution per query image (chosen
            by :func:`shifted_candidates`).
        size: side of the signature thumbnails.
        crop, max_shift: of :func:`aligned_distance`.
        blur: both sets blurred first by a Gaussian of this sigma in pixels
            (:func:`gaussian_blur`; ``0``: none). A light blur (0.7-1 px) evens out JPEG
            re-encoding and sharpening between a copy and its source.

    Returns:
        :class:`PixelPairs`.
    """
    q = _images(query, "query images")
    within = reference is None
    r = q if within else _images(reference, "reference images")
    blur = check_float("blur", blur, low=0.0)
    q, r = _unit_range(q, r)
    if blur > 0:
        q = gaussian_blur(q, blur)
        r = q if within else gaussian_blur(r, blur)
    k = min(candidates, r.shape[0] - (1 if within else 0))
    check_int("candidates", candidates, minimum=2)
    if k < 2:
        raise UserInputError(f"reference images need at least 2 rows; got {r.shape[0]}")
    cand = shifted_candidates(q, None if within else r, k=k, size=size, max_shift=max_shift)
    dist = aligned_distance(q, r, cand, crop=crop, max_shift=max_shift)
    dist, order = dist.sort(dim=1)
    best = cand.gather(1, order)[:, 0]
    return PixelPairs(best, dist[:, 0], dist[:, 0] / dist[:, 1].clamp_min(1e-12))


def mutual_ratio(forward: PixelPairs, backward: PixelPairs) -> torch.Tensor:
    """``(M,)`` the both-ways score of each query image's pair: the geometric mean of its
    ratio (``forward``, query -> reference) and of the reference's own ratio (``backward``,
    reference -> query) when the reference's best match is that query image, else of its
    ratio and 1. A copy is mutual: each half is the other's clear best match."""
    ref = forward.reference
    mutual = backward.reference[ref] == torch.arange(ref.shape[0], device=ref.device)
    back = torch.where(mutual, backward.ratio[ref], torch.ones_like(forward.ratio))
    return (forward.ratio * back).sqrt()
