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
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from dcloop.data._validation import as_label_array, check_label_range, preview
from dcloop.data.badfiles import check_files
from dcloop.data.datasets import IndexedTensorDataset, _require_dir
from dcloop.data.splits import stratified_split_indices

logger = logging.getLogger(__name__)

#: File extensions (lower case) that :func:`audio_folder` reads (with ``soundfile``).
AUDIO_EXTENSIONS: tuple[str, ...] = (".wav", ".flac", ".ogg")

#: Audio sources of :class:`~dcloop.data.LabelNoiseDataModule`.
AUDIO_SOURCES: tuple[str, ...] = ("audio_synth", "audio_folder")

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
        v = opts[key]
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < low:
            raise ValueError(f"audio {key} must be an int >= {low}; got {v!r}")
        opts[key] = int(v)
    secs = opts["clip_seconds"]
    if isinstance(secs, bool) or not isinstance(secs, (int, float)) or not 0 < secs < 3600:
        raise ValueError(f"audio clip_seconds must be a number in (0, 3600); got {secs!r}")
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


class AudioFileDataset(Dataset):
    """Sound files read lazily with ``soundfile``; items are ``(x (1, T), y, index)``.

    Args:
        items: ``(path, label)`` pairs.
        sample_rate: target rate, Hz.
        num_samples: T, the clip length in samples.
        transform: optional callable on the waveform ``(1, T)``.
        num_classes, class_names: as in ``ImageFileDataset``.
    """

    def __init__(
        self,
        items: Sequence[tuple[str | os.PathLike, int]],
        *,
        sample_rate: int,
        num_samples: int,
        transform=None,
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        pairs = list(items)
        self.paths = [os.fspath(p) for p, _ in pairs]
        self.labels = as_label_array([lab for _, lab in pairs])
        if num_classes is not None:
            check_label_range(self.labels, int(num_classes))
        if transform is not None and not callable(transform):
            raise ValueError(f"transform must be callable or None, got {transform!r}")
        self.sample_rate, self.num_samples = int(sample_rate), int(num_samples)
        self.transform = transform
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Tensor, int, int]:
        i = int(i)
        x = read_audio(self.paths[i], self.sample_rate, self.num_samples)
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.labels[i]), i

    def source(self, i: int) -> str:
        """The file path of row ``i``."""
        return self.paths[int(i)]

    @property
    def sources(self) -> list[str]:
        return list(self.paths)

    def _replace(self, paths, labels, **changes) -> AudioFileDataset:
        kw = {
            "sample_rate": self.sample_rate,
            "num_samples": self.num_samples,
            "transform": self.transform,
            "num_classes": self.num_classes,
            "class_names": self.class_names,
        }
        kw.update(changes)
        return AudioFileDataset(list(zip(paths, np.asarray(labels).tolist(), strict=True)), **kw)

    def with_labels(self, new_labels) -> AudioFileDataset:
        new = as_label_array(new_labels, name="new_labels")
        if new.shape[0] != len(self):
            raise ValueError(f"new_labels must have length {len(self)}, got {new.shape[0]}")
        return self._replace(self.paths, new)

    def with_transform(self, transform) -> AudioFileDataset:
        return self._replace(self.paths, self.labels, transform=transform)

    def subset(self, indices) -> AudioFileDataset:
        idx = as_label_array(indices, name="indices")
        return self._replace([self.paths[int(i)] for i in idx], self.labels[idx])


def audio_folder(
    root: str | os.PathLike,
    *,
    sample_rate: int = 8000,
    clip_seconds: float = 0.75,
    extensions: Sequence[str] = AUDIO_EXTENSIONS,
) -> tuple[AudioFileDataset, list[str]]:
    """A class-per-sub-folder tree of sound files (``root/<class>/**/<file>.wav``).

    Class names are the sorted sub-folder names; hidden files and folders are skipped.

    Raises:
        FileNotFoundError: if ``root`` does not exist.
        ValueError: if there is no class folder, or a class folder holds no sound file.
    """
    how = "Pass root=<folder with one sub-folder of sound files per class>, e.g. root/yes/1.wav."
    base = _require_dir(root, "audio folder root", how)
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    class_dirs = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise ValueError(f"no class sub-folders found in {str(base)!r}. {how}")
    names = [p.name for p in class_dirs]
    items: list[tuple[str, int]] = []
    empty: list[str] = []
    for label, cdir in enumerate(class_dirs):
        files = []
        for dirpath, dirnames, filenames in os.walk(cdir):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            files += [
                os.path.join(dirpath, f)
                for f in filenames
                if not f.startswith(".") and f.lower().endswith(exts)
            ]
        if not files:
            empty.append(cdir.name)
        items += [(f, label) for f in sorted(files)]
    if empty:
        raise ValueError(
            f"class folder(s) with no sound files in {str(base)!r}: {preview(empty)}; "
            f"accepted extensions are {', '.join(exts)}"
        )
    opts = audio_options({"sample_rate": sample_rate, "clip_seconds": clip_seconds})
    logger.info("audio_folder %s: %d files in %d classes", base, len(items), len(names))
    ds = AudioFileDataset(
        items,
        sample_rate=opts["sample_rate"],
        num_samples=opts["num_samples"],
        num_classes=len(names),
        class_names=names,
    )
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


def load_audio_splits(
    source: str,
    root,
    options: Mapping[str, Any] | None,
    *,
    seed: int,
    val_frac: float,
    test_frac: float,
    on_bad_file: str = "error",
) -> tuple[dict[str, Dataset], list[str], list[tuple[str, str]]]:
    """Stratified, seeded train/val/test splits of an audio source.

    Returns:
        ``(splits, class_names, skipped)`` with ``skipped`` the ``(path, reason)`` of files
        left out (``on_bad_file="skip"``).
    """
    opts = audio_options(options)
    skipped: list[tuple[str, str]] = []
    if source == "audio_synth":
        full = synthetic_digits(
            num_per_class=opts["num_per_class"],
            sample_rate=opts["sample_rate"],
            clip_seconds=opts["clip_seconds"],
            seed=int(opts["synth_seed"]),
        )
        names = list(SYNTH_CLASS_NAMES)
    elif source == "audio_folder":
        full, names = audio_folder(
            root, sample_rate=opts["sample_rate"], clip_seconds=opts["clip_seconds"]
        )
        full, skipped = check_files(full, on_bad_file)
    else:
        raise ValueError(f"audio source must be one of {list(AUDIO_SOURCES)}; got {source!r}")
    tr, va, te = stratified_split_indices(
        full.labels, seed=seed, val_frac=val_frac, test_frac=test_frac
    )
    return (
        {"train": full.subset(tr), "val": full.subset(va), "test": full.subset(te)},
        names,
        skipped,
    )
