"""An instance-discriminating image embedding learned without labels (SimCLR-style).

A supervised embedding separates classes, not instances: a near-duplicate and a same-class
look-alike sit equally close. Here a small CNN is trained on the images at hand (train and
test together, no labels, nothing downloaded) to tell each image from all others under the
changes a near-duplicate makes: two random views of each image (small shift and zoom,
colour jitter, blur, noise) must be nearer to each other than to any other image of the
batch (NT-Xent, Chen et al. 2020). Cosine distance between the embeddings of the plain
images then ranks candidate duplicates (:func:`~dcloop.health.duplicates.find_leakage`).

The recipe (fixed before it was measured on any real duplicates; ``instance_embedding``'s
defaults):

* network: 4 conv 3x3 layers (32, 64, 128, 128 channels), batch norm and ReLU, a 2x2 max
  pool after each of the first three, global average pool -> 128-d embedding; projection
  head ``Linear(128, 128) - ReLU - Linear(128, 64)`` used only by the loss;
* views: zoom to a side of 0.8..1.0 of the image and shift by up to ``max_shift`` = 4 px
  (bilinear, reflected border); brightness, contrast and saturation each x0.6..1.4 and a
  per-channel gain x0.9..1.1; half the views blurred (a 3x3 box blur mixed in by 0..1);
  Gaussian noise of std 0..0.03 (pixels on [0, 1]); no horizontal flip (``flip=False``):
  a mirrored scene is not the same shot;
* loss: NT-Xent at temperature 0.2 over batches of 256 (two views each);
* AdamW, learning rate 2e-3 with a cosine decay to 0, weight decay 1e-4; ``epochs`` = 30
  (about 13 s an epoch on 3,276 32x32 images, one CPU thread);
* output: the L2-normalised 128-d backbone embedding of each plain image (``head=True``:
  the 64-d projection instead).

Measured on ciFAIR's 139 human-judged CIFAR-10 train/test pairs
(``scripts/results/bench_health_leakage_contrastive.md``, seeds 0 and 1, about 5 min of one
CPU thread each): alone, AP 0.77 / 0.80 by nearest / second-nearest ratio (a supervised
ResNet-8 run's embedding: 0.70), but combined with :func:`~dcloop.health.pixel_leakage` it
does not beat the pixels alone (recall at precision >= 0.8 at most 0.892 against 0.899), so
no callback uses it.

Deterministic for a seed on CPU (its own generator; the global RNG is left as it was).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dcloop._checks import check_bool, check_float, check_int
from dcloop.errors import UserInputError

log = logging.getLogger(__name__)


def instance_embedding(
    images: Any,
    *,
    epochs: int = 30,
    seed: int = 0,
    batch_size: int = 256,
    temperature: float = 0.2,
    lr: float = 2e-3,
    max_shift: int = 4,
    flip: bool = False,
    head: bool = False,
) -> torch.Tensor:
    """``(N, D)`` L2-normalised embeddings of ``images`` from a contrastive net trained on them.

    Args:
        images: ``(N, C, H, W)`` images, any value range (mapped onto [0, 1] by their min and
            max); ``N >= 2``, ``H, W >= 8``. Pass train and test images together.
        epochs: passes over the images (each image two views per pass).
        seed: fixes the network's initial weights, the batches and the views.
        batch_size: images per batch (``min(batch_size, N)``); the loss contrasts each view
            with the ``2 * batch_size - 2`` views of the other images.
        temperature: NT-Xent temperature.
        lr: AdamW learning rate at the start (cosine decay to 0).
        max_shift: largest shift of a view, in pixels.
        flip: also mirror half the views left-right.
        head: return the projection head's output (``D = 64``) instead of the backbone's
            (``D = 128``).

    Returns:
        ``(N, D)`` float32 tensor on the images' device, rows of unit length.

    Raises:
        UserInputError: images not ``(N, C, H, W)`` with ``N >= 2`` and ``H, W >= 8``, not
            finite, or an option out of range.

    Example:
        >>> emb = instance_embedding(torch.rand(64, 3, 32, 32), epochs=1)  # doctest: +SKIP
        >>> emb.shape
        torch.Size([64, 128])
    """
    x = _check_images(images)
    epochs = check_int("epochs", epochs, minimum=1)
    seed = check_int("seed", seed, minimum=0, maximum=2**63 - 1)
    batch_size = check_int("batch_size", batch_size, minimum=2)
    temperature = check_float("temperature", temperature, low=0.0, low_open=True)
    lr = check_float("lr", lr, low=0.0, low_open=True)
    max_shift = check_int("max_shift", max_shift, minimum=0, maximum=min(x.shape[-2:]) // 2)
    flip = check_bool("flip", flip)
    head = check_bool("head", head)
    net = _fit(
        x,
        epochs=epochs,
        seed=seed,
        batch_size=min(batch_size, x.shape[0]),
        temperature=temperature,
        lr=lr,
        max_shift=max_shift,
        flip=flip,
    )
    return _embed(net, x, head=head)


def _check_images(images: Any) -> torch.Tensor:
    t = torch.as_tensor(images)
    if t.ndim != 4:
        raise UserInputError(f"images must be (N, C, H, W); got images with shape {tuple(t.shape)}")
    n, _, h, w = t.shape
    if n < 2:
        raise UserInputError(f"images must hold at least 2 images to contrast; got N={n}")
    if min(h, w) < 8:
        raise UserInputError(f"images must be at least 8x8 pixels; got H={h}, W={w}")
    t = t.float()
    if not bool(torch.isfinite(t).all()):
        raise UserInputError("images hold NaN or inf values; expected finite pixels")
    lo, hi = float(t.min()), float(t.max())
    return (t - lo) / max(hi - lo, 1e-12)


class _Net(nn.Module):
    """The backbone (``embed``) and the projection head (``project``) of the recipe."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        widths = [channels, 32, 64, 128, 128]
        for i in range(4):
            layers += [
                nn.Conv2d(widths[i], widths[i + 1], 3, padding=1, bias=False),
                nn.BatchNorm2d(widths[i + 1]),
                nn.ReLU(inplace=True),
            ]
            if i < 3:
                layers.append(nn.MaxPool2d(2))
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.embed = nn.Sequential(*layers)
        self.project = nn.Sequential(nn.Linear(128, 128), nn.ReLU(inplace=True), nn.Linear(128, 64))


def _uniform(n: int, lo: float, hi: float, g: torch.Generator, device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g).to(device)


def augment(
    x: torch.Tensor, g: torch.Generator, *, max_shift: int = 4, flip: bool = False
) -> torch.Tensor:
    """One random view of each ``(N, C, H, W)`` image on [0, 1] (the recipe's changes).

    ``g``: a CPU generator that draws every random number (so a seed fixes the views).
    """
    n, c, h, w = x.shape
    dev = x.device
    scale = _uniform(n, 0.8, 1.0, g, dev)
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0] = scale
    theta[:, 1, 1] = scale
    theta[:, 0, 2] = _uniform(n, -1, 1, g, dev) * 2 * max_shift / w
    theta[:, 1, 2] = _uniform(n, -1, 1, g, dev) * 2 * max_shift / h
    grid = F.affine_grid(theta, [n, c, h, w], align_corners=False)
    v = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if flip:
        mirror = (torch.rand(n, generator=g) < 0.5).to(dev)[:, None, None, None]
        v = torch.where(mirror, v.flip(-1), v)
    # colour: brightness, contrast (about the grey mean), saturation (about the grey), cast
    v = v * _uniform(n, 0.6, 1.4, g, dev)[:, None, None, None]
    grey = v.mean(1, keepdim=True) if c == 3 else v
    mean = grey.mean((-2, -1), keepdim=True)
    v = (v - mean) * _uniform(n, 0.6, 1.4, g, dev)[:, None, None, None] + mean
    if c == 3:
        grey = v.mean(1, keepdim=True)
        v = grey + (v - grey) * _uniform(n, 0.6, 1.4, g, dev)[:, None, None, None]
    v = v * _uniform(n * c, 0.9, 1.1, g, dev).view(n, c, 1, 1)
    # JPEG-like softening and noise
    blurred = F.avg_pool2d(F.pad(v, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    mix = _uniform(n, 0.0, 1.0, g, dev) * (torch.rand(n, generator=g) < 0.5).to(dev)
    v = v + (blurred - v) * mix[:, None, None, None]
    v = v + torch.randn(v.shape, generator=g).to(dev) * _uniform(n, 0, 0.03, g, dev).view(
        n, 1, 1, 1
    )
    return v.clamp(0.0, 1.0)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent loss of two ``(B, D)`` batches of views, row ``i`` of each the same image."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    b = z1.shape[0]
    sim = (z @ z.T) / temperature
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(sim, target)


def _fit(
    x: torch.Tensor,
    *,
    epochs: int,
    seed: int,
    batch_size: int,
    temperature: float,
    lr: float,
    max_shift: int,
    flip: bool,
) -> _Net:
    """The trained network (``x`` checked, on [0, 1])."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _Net(x.shape[1]).to(x.device)
    n = x.shape[0]
    steps_per_epoch = n // batch_size
    total = epochs * steps_per_epoch
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )
    net.train()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=g).to(x.device)
        running = torch.zeros((), device=x.device)
        for s in range(steps_per_epoch):
            batch = x[order[s * batch_size : (s + 1) * batch_size]]
            views = torch.cat([augment(batch, g, max_shift=max_shift, flip=flip) for _ in "12"])
            z = net.project(net.embed(views))
            loss = nt_xent(z[:batch_size], z[batch_size:], temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += loss.detach()  # one host copy an epoch, not a step
        log.debug("contrastive epoch %d: loss %.4f", epoch, float(running) / steps_per_epoch)
    return net.eval()


def _embed(net: _Net, x: torch.Tensor, *, head: bool) -> torch.Tensor:
    """``(N, D)`` L2-normalised embeddings of the plain images (backbone, or the head's)."""
    out = []
    with torch.no_grad():
        for s in range(0, x.shape[0], 512):
            f = net.embed(x[s : s + 512])
            out.append(net.project(f) if head else f)
    return F.normalize(torch.cat(out), dim=1)
