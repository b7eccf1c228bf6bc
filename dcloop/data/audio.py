"""Audio data: a folder of sound files (class per sub-folder) and the embedded synthetic digits.

Items are ``(x, y, index)`` with ``x`` a float32 waveform ``(1, T)`` in ``[-1, 1]`` (mono, at
``sample_rate``, cropped or zero-padded to ``T = round(clip_seconds * sample_rate)``).

The embedded default, :func:`synthetic_digits`, is made in-process from a fixed seed: ten
classes of "spoken-digit-like" sounds, each a consonant onset (none, a fricative hiss or a nasal
hum) followed by a voiced vowel glide between two class-specific formant pairs, with random
pitch, pitch contour, vocal-tract scale, timing, loudness and background noise per clip. It
needs no system package and no download, gives identical bytes on every machine, and its
difficulty is under our control (two pairs of classes share their vowels and differ only in
the onset or glide).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dcloop._checks import check_float, check_int
from dcloop.data.datasets import FileDataset, IndexedTensorDataset, class_folder

#: File extensions (lower case) that :func:`audio_folder` reads (with ``soundfile``).
AUDIO_EXTENSIONS: tuple[str, ...] = (".wav", ".flac", ".ogg")


#: Class names of the synthetic digits.
SYNTH_CLASS_NAMES: list[str] = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"
]  # fmt: skip

#: Shortest clip, in samples (0.2 s at 8 kHz).
MIN_SAMPLES = 1600

_DEFAULTS = {"sample_rate": 8000, "clip_seconds": 0.75, "num_per_class": 150, "synth_seed": 0}

# vowel -> (F1, F2, F3) Hz, adult-male averages
_VOWELS = {
    "i": (280, 2250, 2900), "I": (400, 1900, 2550), "e": (400, 2000, 2600),
    "E": (550, 1770, 2500), "a": (710, 1100, 2450), "O": (570, 840, 2400),
    "o": (450, 800, 2400), "u": (310, 870, 2250), "A": (620, 1200, 2550),
}  # fmt: skip
# class -> (onset, start vowel, end vowel)
_CLASSES = [
    ("fric", "I", "o"), ("none", "u", "A"), ("none", "u", "u"), ("fric", "i", "i"),
    ("fric", "O", "O"), ("fric", "a", "I"), ("fric", "I", "I"), ("fric", "E", "A"),
    ("none", "e", "I"), ("nasal", "a", "I"),
]  # fmt: skip


def audio_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate the data module's ``audio`` mapping and fill defaults:
    ``sample_rate`` (Hz), ``clip_seconds``, ``num_per_class`` and ``synth_seed`` (synthetic)."""
    opts = dict(_DEFAULTS)
    if options is not None:
        unknown = sorted(str(k) for k in options if k not in _DEFAULTS)
        if unknown:
            raise ValueError(f"audio has unknown key(s) {unknown}; allowed: {list(_DEFAULTS)}")
        opts.update(options)
    for key, low in (("sample_rate", 1), ("num_per_class", 1), ("synth_seed", 0)):
        opts[key] = check_int(key, opts[key], minimum=low)
    secs = check_float(
        "clip_seconds", opts["clip_seconds"], low=0, high=3600, low_open=True, high_open=True
    )
    opts["num_samples"] = round(float(secs) * opts["sample_rate"])
    if opts["num_samples"] < MIN_SAMPLES:
        raise ValueError(
            f"audio clips need at least {MIN_SAMPLES} samples (the synthesiser and AudioCNN's "
            f"spectrogram need that much); clip_seconds={secs!r} at sample_rate="
            f"{opts['sample_rate']} gives {opts['num_samples']}"
        )
    return opts


def read_audio(path: str, sample_rate: int, num_samples: int) -> Tensor:
    """Read one sound file as a float32 waveform ``(1, num_samples)`` in [-1, 1].

    Channels are averaged, the rate is converted with ``torchaudio.functional.resample`` and
    the clip is cropped or zero-padded at the end.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        OSError: if the file cannot be decoded (names the file).
    """
    import soundfile as sf

    if not os.path.isfile(path):
        raise FileNotFoundError(f"audio file not found: {path}")
    try:
        data, sr = sf.read(path, dtype="float32", always_2d=True)
    except (RuntimeError, OSError, ValueError, TypeError) as err:
        raise OSError(f"could not read audio file {path}: {err}") from err
    if data.shape[0] == 0:
        raise OSError(f"could not read audio file {path}: it holds no samples")
    x = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))[None]
    if not torch.isfinite(x).all():
        raise OSError(f"could not read audio file {path}: it holds NaN or infinite samples")
    if sr != sample_rate:
        import torchaudio.functional as AF

        x = AF.resample(x, int(sr), int(sample_rate))
    if x.shape[1] >= num_samples:
        x = x[:, :num_samples]
    else:
        x = torch.nn.functional.pad(x, (0, num_samples - x.shape[1]))
    return x.clamp_(-1.0, 1.0).contiguous()


@dataclass(frozen=True)
class AudioReader:
    """Reads a sound file as a float32 waveform ``(1, num_samples)`` (see :func:`read_audio`).

    Args:
        sample_rate: target rate, Hz.
        num_samples: T, the clip length in samples.
    """

    sample_rate: int
    num_samples: int

    def __call__(self, path: str) -> Tensor:
        return read_audio(path, self.sample_rate, self.num_samples)


def audio_folder(
    root: str | os.PathLike,
    *,
    sample_rate: int = 8000,
    clip_seconds: float = 0.75,
    extensions: Sequence[str] = AUDIO_EXTENSIONS,
) -> tuple[FileDataset, list[str]]:
    """A class-per-sub-folder tree of sound files (``root/<class>/**/<file>.wav``).

    Class names are the sorted sub-folder names; hidden files and folders are skipped.

    Returns:
        ``(dataset, class_names)``: a :class:`~dcloop.data.FileDataset` read with
        :class:`AudioReader`.

    Raises:
        FileNotFoundError: if ``root`` does not exist.
        ValueError: if there is no class folder, or a class folder holds no sound file.
    """
    opts = audio_options({"sample_rate": sample_rate, "clip_seconds": clip_seconds})
    reader = AudioReader(opts["sample_rate"], opts["num_samples"])
    how = "Pass root=<folder with one sub-folder of sound files per class>, e.g. root/yes/1.wav."
    paths, labels, names = class_folder(root, extensions, what="sound", how=how)
    ds = FileDataset(paths, labels, reader, num_classes=len(names), class_names=names)
    return ds, names


def _synth_clip(k: int, rng: np.random.Generator, sr: int, t_total: int) -> np.ndarray:
    onset, v0, v1 = _CLASSES[k]
    scale = rng.uniform(0.8, 1.2) * rng.uniform(0.9, 1.1, size=3)  # vocal tract, per formant
    f_start = np.array(_VOWELS[v0]) * scale
    f_end = np.array(_VOWELS[v1]) * scale
    clip = t_total / sr
    dur = rng.uniform(0.37, 0.6) * clip  # 0.28-0.45 s of a 0.75 s clip
    n_v = int(dur * sr)
    n_on = int(rng.uniform(0.067, 0.12) * clip * sr) if onset != "none" else 0
    start = rng.integers(0, max(1, t_total - n_v - n_on))
    t = np.arange(n_v) / sr
    f0 = rng.uniform(90, 220) * (1 + rng.uniform(-0.25, 0.15) * t / dur)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    glide = np.clip((t / dur - 0.2) / 0.6, 0, 1)[:, None]
    formants = f_start[None] * (1 - glide) + f_end[None] * glide  # (n_v, 3)
    bw = np.array([80.0, 110.0, 150.0])
    h = np.arange(1, int(3400 / f0.min()) + 1, dtype=np.float32)[:, None]  # (H, 1)
    fh = h * f0.astype(np.float32)  # (H, n_v)
    amp = sum(np.exp(-0.5 * ((fh - formants[:, j]) / bw[j]) ** 2) for j in range(3))
    voiced = ((amp / np.sqrt(h)) * (fh < 3500) * np.sin(h * phase.astype(np.float32))).sum(0)
    env = np.minimum(1, np.minimum(t / 0.03, (dur - t) / 0.08)).clip(0)
    voiced *= env / (np.abs(voiced).max() + 1e-9)
    out = np.zeros(t_total)
    if onset == "fric":
        hiss = np.diff(rng.normal(size=n_on + 1)) * np.hanning(n_on) * rng.uniform(0.05, 0.35)
        out[start : start + n_on] += hiss
    elif onset == "nasal":
        tn = np.arange(n_on) / sr
        out[start : start + n_on] += 0.5 * np.sin(2 * np.pi * f0[0] * tn) * np.hanning(n_on)
    out[start + n_on : start + n_on + n_v] += voiced
    out *= rng.uniform(0.3, 0.9) / (np.abs(out).max() + 1e-9)
    snr_db = rng.uniform(5, 25)
    out += rng.normal(size=t_total) * np.sqrt(np.mean(out**2) / 10 ** (snr_db / 10))
    return np.clip(out, -1, 1).astype(np.float32)


@functools.lru_cache(maxsize=4)
def _synth_arrays(num_per_class: int, sample_rate: int, num_samples: int, seed: int):
    x = np.zeros((10 * num_per_class, 1, num_samples), dtype=np.float32)
    labels = np.repeat(np.arange(10), num_per_class)
    for row, k in enumerate(labels):
        rng = np.random.default_rng([seed, int(k), row])
        x[row, 0] = _synth_clip(int(k), rng, sample_rate, num_samples)
    return x, labels


def synthetic_digits(
    *, num_per_class: int = 150, sample_rate: int = 8000, clip_seconds: float = 0.75, seed: int = 0
) -> IndexedTensorDataset:
    """The embedded audio default: ``10 * num_per_class`` synthetic spoken-digit-like clips.

    Deterministic in its arguments (the same bytes on every machine); made in a few seconds.

    Returns:
        An :class:`IndexedTensorDataset` with ``x`` float32 ``(N, 1, T)`` in [-1, 1], labels
        ``0..9`` (:data:`SYNTH_CLASS_NAMES`) and sources ``"audio_synth:<row>"``.
    """
    opts = audio_options(
        {"num_per_class": num_per_class, "sample_rate": sample_rate, "clip_seconds": clip_seconds}
    )
    x, labels = _synth_arrays(opts["num_per_class"], opts["sample_rate"], opts["num_samples"], seed)
    return IndexedTensorDataset(
        torch.from_numpy(x.copy()),
        labels,
        sources=[f"audio_synth:{i}" for i in range(len(labels))],
        num_classes=10,
        class_names=SYNTH_CLASS_NAMES,
    )
