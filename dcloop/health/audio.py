"""An audio signal for outliers, near-duplicates and leakage, computed on the clips (no training).

A network trained on the labels maps clips by class: in a default run on planted spoken
digits its embedding flagged none of 19 white-noise clips (they land together, each other's
neighbours) and found none of 36 moved copies
(``scripts/results/bench_health_planted_run_fsdd_embedding.md``). The clips say more:

* :func:`audio_signature`: the log-mel spectrogram, standardised per clip (the level drops
  out), with a floor ``floor_db`` below the set's mean mel power: quieter detail (padding,
  near-silence, a recording's noise floor) counts as silence. Datalab's kNN rule on it finds
  outliers.
* :func:`spectrum_signature`: the log of the mean mel power over time, standardised. A move
  in time leaves it as it was, so it chooses the candidates of a copy.
* :func:`waveform_distance`: ``1 -`` the largest normalised cross-correlation of two clips over
  every lag (one FFT product per pair). Gain, polarity and a move in time cost nothing; noise
  added to a copy costs its share of the power (10 dB below the clip: about 0.05).

:func:`audio_leakage` ranks each query clip's best candidate by its waveform distance and by
the ratio best / second best, as :func:`~dcloop.health.pixel_leakage` does for images.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from dcloop._checks import check_float, check_int
from dcloop.errors import UserInputError
from dcloop.health.knn import Neighbours, knn
from dcloop.health.pixels import PixelPairs

#: Window and hop of the mel spectrogram, seconds (``model=audio_cnn``'s at 8 kHz: 256 / 192).
WINDOW_S, HOP_S = 0.032, 0.024

#: Clips a chunk of the mel front end takes at once.
CHUNK = 512


def _clips(x: Any, name: str) -> torch.Tensor:
    """``(N, T)`` float clips (channels averaged) from ``(N, T)`` or ``(N, C, T)``."""
    t = torch.as_tensor(x)
    if t.ndim not in (2, 3) or not t.is_floating_point():
        raise UserInputError(
            f"{name} must be float clips (N, T) or (N, C, T); got {t.dtype} of shape "
            f"{tuple(t.shape)}"
        )
    t = t.float().mean(1) if t.ndim == 3 else t.float()
    if t.shape[0] < 1 or t.shape[1] < 2:
        raise UserInputError(f"{name} need at least 1 clip of 2 samples; got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise UserInputError(f"{name} hold NaN or infinite samples; expected finite clips")
    return t


def mel_power(clips: Any, *, sample_rate: int, n_mels: int = 32, max_frames: int = 64):
    """``(N, n_mels, frames)`` mel power of ``clips`` (:data:`WINDOW_S` windows every
    :data:`HOP_S`); longer clips are pooled to ``max_frames`` frames (the mean power)."""
    import torchaudio

    x = _clips(clips, "clips")
    check_int("sample_rate", sample_rate, minimum=1)
    check_int("n_mels", n_mels, minimum=1)
    check_int("max_frames", max_frames, minimum=1)
    n_fft = max(16, 1 << round(math.log2(WINDOW_S * sample_rate)))
    hop = max(1, round(HOP_S * sample_rate))
    if x.shape[1] < n_fft:  # a clip shorter than one window: pad it to one
        x = F.pad(x, (0, n_fft - x.shape[1]))
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=sample_rate, n_fft=n_fft, hop_length=hop, n_mels=n_mels
    ).to(x.device)
    out = []
    for s in range(0, x.shape[0], CHUNK):
        m = mel(x[s : s + CHUNK])
        if m.shape[-1] > max_frames:
            m = F.adaptive_avg_pool1d(m, max_frames)
        out.append(m)
    return torch.cat(out)


def _floor(power: torch.Tensor, floor_db: float) -> float:
    check_float("floor_db", floor_db, low=0.0)
    return float(power.double().mean()) * 10.0 ** (-floor_db / 10.0) + 1e-12


def _standardise(t: torch.Tensor) -> torch.Tensor:
    t = t - t.mean(1, keepdim=True)
    return t / (t.std(1, keepdim=True) + 1e-2)


def audio_signature(
    clips: Any, *, sample_rate: int, floor_db: float = 40.0, n_mels: int = 32, max_frames: int = 64
) -> torch.Tensor:
    """``(N, n_mels * frames)`` log-mel spectrograms, floored at ``floor_db`` below the mean
    mel power of ``clips`` and standardised per clip (module doc).

    On spoken digits with 50 planted noise clips and tones among 1,300, Datalab's rule on it
    (euclidean) scored F1 0.943 / 0.926 / 0.914 over three seeds; with the network's own
    front end (``log(power + 1e-6)``) 0.877 / 0.855 / 0.847
    (``scripts/results/bench_audio_signal.md``).

    Example:
        >>> clips = torch.randn(4, 8000) * 0.1
        >>> audio_signature(clips, sample_rate=8000).shape
        torch.Size([4, 1344])
    """
    power = mel_power(clips, sample_rate=sample_rate, n_mels=n_mels, max_frames=max_frames)
    return _standardise(torch.log(power + _floor(power, floor_db)).flatten(1))


def spectrum_signature(
    clips: Any, *, sample_rate: int, floor: float | None = None, floor_db: float = 40.0
) -> torch.Tensor:
    """``(N, 32)`` log mean mel power over time, standardised per clip: the same for a clip
    moved in time, louder or quieter. ``floor``: the power floor (default ``floor_db`` below
    the mean of ``clips``)."""
    power = mel_power(clips, sample_rate=sample_rate).mean(-1)
    low = _floor(power, floor_db) if floor is None else float(floor)
    return _standardise(torch.log(power + low))


def waveform_distance(query: Any, reference: Any, candidates: torch.Tensor) -> torch.Tensor:
    """``(M, k)``: ``1 - max |normalised cross-correlation|`` over every lag between each query
    clip and its ``candidates`` (indices into ``reference``); 0 for a copy moved in time at
    any gain, 1 for a silent clip.

    Args:
        query: ``(M, T)`` or ``(M, C, T)`` clips.
        reference: ``(N, T')`` or ``(N, C, T')`` clips.
        candidates: ``(M, k)`` indices into ``reference``.

    Example:
        >>> a = torch.randn(2, 400)
        >>> moved = torch.cat([torch.zeros(2, 30), 0.5 * a], 1)
        >>> waveform_distance(a, moved, torch.tensor([[0, 1], [1, 0]]))[:, 0] < 1e-3
        tensor([True, True])
    """
    q = _clips(query, "query clips")
    r = _clips(reference, "reference clips").to(q.device)
    candidates = torch.as_tensor(candidates).to(q.device)
    if candidates.ndim != 2 or candidates.shape[0] != q.shape[0]:
        raise UserInputError(
            f"candidates must be (M, k) with M = {q.shape[0]} query clips; got "
            f"{tuple(candidates.shape)}"
        )
    if candidates.numel() and (int(candidates.min()) < 0 or int(candidates.max()) >= r.shape[0]):
        raise UserInputError(f"candidates must index the {r.shape[0]} reference clips")
    q = q - q.mean(1, keepdim=True)
    r = r - r.mean(1, keepdim=True)
    nq, nr = q.norm(dim=1), r.norm(dim=1)
    n = 1 << (q.shape[1] + r.shape[1] - 1 - 1).bit_length()  # every lag, no wrap-around
    m, k = candidates.shape
    out = torch.ones(m, k, device=q.device)
    step = max(1, (1 << 23) // max(k * n, 1))  # about 64 MB of spectra a chunk
    for s in range(0, m, step):
        c = candidates[s : s + step]
        fq = torch.fft.rfft(q[s : s + step], n)
        fr = torch.fft.rfft(r[c.flatten()], n).reshape(c.shape[0], k, -1)
        cc = torch.fft.irfft(fq[:, None] * fr.conj(), n).abs().amax(-1)
        norm = nq[s : s + step, None] * nr[c]
        ncc = torch.where(norm > 1e-12, cc / norm.clamp_min(1e-12), torch.zeros_like(cc))
        out[s : s + step] = (1 - ncc).clamp(0, 1)
    return out


def audio_leakage(
    query: Any,
    reference: Any = None,
    *,
    sample_rate: int,
    candidates: int = 10,
    floor_db: float = 40.0,
) -> PixelPairs:
    """Each query clip's closest reference clip by its waveform (module doc).

    Candidates are the ``candidates`` nearest reference clips by :func:`spectrum_signature`
    (euclidean; floored ``floor_db`` below the reference set's mean power); each is compared
    by :func:`waveform_distance`. On spoken digits every one of 100 planted copies (moved
    20-60 ms, gain 0.7-1.3, noise 30 dB down) was its original's best candidate at distance
    at most 0.0017; distinct recordings were 0.08 or more apart
    (``scripts/results/bench_audio_signal.md``).

    Args:
        query: ``(M, T)`` or ``(M, C, T)`` clips (e.g. the test set).
        reference: clips of the same form (e.g. the training set), ``N >= 2``; ``None``: the
            query clips themselves, each clip's own entry left out (copies inside one set).
        sample_rate: Hz of both.
        candidates: reference clips compared by waveform per query clip.
        floor_db: of the signatures.

    Returns:
        :class:`~dcloop.health.PixelPairs`: ``reference`` (M,) the best clip, ``distance``
        its waveform distance, ``ratio`` best / second best.
    """
    check_int("candidates", candidates, minimum=2)
    q = _clips(query, "query clips")
    within = reference is None
    r = q if within else _clips(reference, "reference clips")
    k = min(candidates, r.shape[0] - (1 if within else 0))
    if k < 2:
        raise UserInputError(f"reference clips need at least {3 if within else 2} rows")
    power = mel_power(r, sample_rate=sample_rate).mean(-1)
    low = _floor(power, floor_db)
    sig_r = _standardise(torch.log(power + low))
    sig_q = sig_r if within else spectrum_signature(q, sample_rate=sample_rate, floor=low)
    if within:  # leave-one-out: a clip is never its own candidate
        nb = knn(sig_q, sig_r, k=k + 1, metric="euclidean")
        own = nb.index == torch.arange(q.shape[0], device=nb.index.device)[:, None]
        d = nb.distance.masked_fill(own, float("inf"))
        d, order = d.sort(dim=1, stable=True)
        nb = Neighbours(d[:, :k], nb.index.gather(1, order)[:, :k])
    else:
        nb = knn(sig_q, sig_r, k=k, metric="euclidean")
    cand = nb.index
    dist = waveform_distance(q, r, cand)
    dist, order = dist.sort(dim=1)
    best = cand.gather(1, order)[:, 0]
    return PixelPairs(best, dist[:, 0], dist[:, 0] / dist[:, 1].clamp_min(1e-12))
