"""Audio augmentations on waveforms, per sample (in workers) and per batch (on the device).

One implementation serves both: every op works on a batch ``(B, C, T)`` with a level per
sample, with tensors on any device and no host synchronisation, so the DataLoader worker calls
it with ``B = 1`` on the CPU and ``on_after_batch_transfer`` calls it on the whole batch on the
GPU. Waveforms are float in ``[-1, 1]``; outputs keep shape, dtype and that range. Level 0
leaves a sample unchanged; levels ``1..L`` go from mild to strong (:data:`AUDIO_OPS`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torchaudio.functional as AF

from dcloop._checks import check_float, check_int
from dcloop.augment.image import check_ops

#: op name -> (mild, strong) magnitude and what it means.
AUDIO_OPS: dict[str, tuple[float, float, str]] = {
    "noise": (30.0, 10.0, "additive white noise at this SNR, dB (torchaudio add_noise)"),
    "time_shift": (0.05, 0.25, "shift by up to this fraction of the clip, zero-filled"),
    "frequency_shift": (40.0, 200.0, "pitch/frequency shift of every component, Hz either way"),
    "speed": (0.05, 0.2, "speed factor in [1 - m, 1 + m] (resampled, length kept)"),
}


def level_table(op: str, num_levels: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(num_levels + 1,)`` magnitudes of ``op`` on ``device``; entry 0 (level 0) is unused.

    Built on the device itself: no host-to-device copy, so no synchronisation.
    """
    if op not in AUDIO_OPS:
        raise ValueError(f"audio op must be one of {list(AUDIO_OPS)}; got {op!r}")
    mild, strong, _ = AUDIO_OPS[op]
    zero = torch.zeros(1, device=device)
    t = torch.linspace(0, 1, num_levels, device=device) if num_levels > 1 else zero
    return torch.cat([zero, mild + t * (strong - mild)])


def _uniform(shape, generator, device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=device)


def add_noise_snr(x: torch.Tensor, snr_db: torch.Tensor, generator=None) -> torch.Tensor:
    """White noise at ``snr_db`` (B,) per sample, with ``torchaudio.functional.add_noise``."""
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    snr = snr_db.to(x.dtype).unsqueeze(-1).expand(x.shape[:-1])
    return AF.add_noise(x, noise, snr)


def time_shift(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Shift each sample by ``shift`` (B,) steps (positive: later), zero-filled."""
    t = x.shape[-1]
    src = torch.arange(t, device=x.device) - shift.long().unsqueeze(-1)  # (B, T)
    valid = (src >= 0) & (src < t)
    idx = src.clamp(0, t - 1).unsqueeze(1).expand_as(x)
    return torch.where(valid.unsqueeze(1), x.gather(-1, idx), torch.zeros_like(x))


def change_speed(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Play each sample ``factor`` (B,) times faster (linear interpolation, length kept)."""
    t = x.shape[-1]
    pos = torch.arange(t, device=x.device, dtype=torch.float32) * factor.float().unsqueeze(-1)
    lo = pos.floor().long()
    frac = (pos - lo).to(x.dtype).unsqueeze(1)
    valid = (pos <= t - 1).unsqueeze(1)
    i0 = lo.clamp(0, t - 1).unsqueeze(1).expand_as(x)
    i1 = (lo + 1).clamp(0, t - 1).unsqueeze(1).expand_as(x)
    out = x.gather(-1, i0) * (1 - frac) + x.gather(-1, i1) * frac
    return torch.where(valid, out, torch.zeros_like(out))


def frequency_shift(x: torch.Tensor, shift_hz: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Shift every frequency component by ``shift_hz`` (B,) (single-sideband, via the FFT)."""
    t = x.shape[-1]
    spec = torch.fft.fft(x.float(), dim=-1)
    h = torch.zeros(t, device=x.device)
    h[0] = 1
    h[1 : (t + 1) // 2] = 2
    if t % 2 == 0:
        h[t // 2] = 1
    analytic = torch.fft.ifft(spec * h, dim=-1)
    time = torch.arange(t, device=x.device, dtype=torch.float32) / sample_rate
    phase = 2 * math.pi * shift_hz.float().unsqueeze(-1) * time  # (B, T)
    return (analytic * torch.polar(torch.ones_like(phase), phase).unsqueeze(1)).real.to(x.dtype)


def augment_audio(
    x: torch.Tensor,
    level: torch.Tensor,
    *,
    ops: Sequence[str],
    num_levels: int,
    sample_rate: int,
    p: float = 0.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Apply ``ops`` to a batch, each sample at its own level.

    Args:
        x: ``(B, C, T)`` float waveforms in [-1, 1], on any device.
        level: ``(B,)`` int levels in ``[0, num_levels]`` on ``x``'s device (0: unchanged).
        ops: names from :data:`AUDIO_OPS`, applied in this order.
        num_levels: L.
        sample_rate: of ``x``, Hz (for the frequency shift).
        p: probability that each op is applied to a sample.
        generator: a ``torch.Generator`` on ``x``'s device for reproducible draws
            (default: the global one).

    Returns:
        ``(B, C, T)``, same dtype, clamped to [-1, 1]. No host synchronisation.
    """
    check_ops(ops, AUDIO_OPS, "audio")
    if x.ndim != 3:
        raise ValueError(f"audio augmentation expects (B, C, T); got shape {tuple(x.shape)}")
    b, dev = x.shape[0], x.device
    level = level.to(dev).long()
    out = x
    for op in ops:
        mag = level_table(op, num_levels, dev)[level]  # (B,)
        on = (_uniform(b, generator, dev) < p) & (level > 0)
        sign = torch.where(_uniform(b, generator, dev) < 0.5, -1.0, 1.0)
        amount = _uniform(b, generator, dev)
        if op == "noise":
            new = add_noise_snr(out, mag.clamp_min(0.1), generator)  # level 0 is masked below
        elif op == "time_shift":
            new = time_shift(out, torch.round(sign * amount * mag * out.shape[-1]))
        elif op == "speed":
            new = change_speed(out, 1 + sign * amount * mag)
        else:
            new = frequency_shift(out, sign * (0.5 + 0.5 * amount) * mag, sample_rate)
        out = torch.where(on.view(b, 1, 1), new, out)
    return out.clamp(-1.0, 1.0).to(x.dtype)


class AudioAugment:
    """Per-sample audio augmentation at one level, for DataLoader workers.

    Call it as ``aug(x, seed)`` on one waveform ``(C, T)``; the same ``(x, seed)`` gives the
    same output, ``seed=None`` draws from the process's generator.
    """

    def __init__(
        self, ops: Sequence[str], level: int, num_levels: int, *, sample_rate: int, p: float = 0.5
    ) -> None:
        check_ops(ops, AUDIO_OPS, "audio")
        check_int("level", level, minimum=1, maximum=num_levels)
        check_float("p", p, low=0, high=1)
        self.ops, self.level, self.num_levels = list(ops), int(level), int(num_levels)
        self.sample_rate, self.p = int(sample_rate), float(p)

    def __call__(self, x: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        if x.ndim != 2:
            raise ValueError(f"audio augmentation expects (C, T); got shape {tuple(x.shape)}")
        g = None
        if seed is not None:
            g = torch.Generator(device=x.device)
            g.manual_seed(int(seed))
        lvl = torch.full((1,), self.level, dtype=torch.long, device=x.device)
        kw = {"ops": self.ops, "num_levels": self.num_levels, "sample_rate": self.sample_rate}
        return augment_audio(x[None], lvl, p=self.p, generator=g, **kw)[0]


def audio_transforms(
    ops: Sequence[str], num_levels: int, *, sample_rate: int, p: float = 0.5
) -> list[AudioAugment | None]:
    """One per-sample transform per level: ``[None, level 1, ..., level num_levels]``."""
    if num_levels < 1:
        raise ValueError(f"levels must be >= 1; got {num_levels}")
    return [None] + [
        AudioAugment(ops, lvl, num_levels, sample_rate=sample_rate, p=p)
        for lvl in range(1, num_levels + 1)
    ]
