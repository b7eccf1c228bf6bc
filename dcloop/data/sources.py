"""Data sources: what ``data.source`` builds and :class:`~dcloop.data.LabelNoiseDataModule` loads.

A source is any object with a ``name`` and ``load(seed=, val_frac=, test_frac=)`` returning
``({"train", "val", "test"}: datasets of (x, y, index) items, class names)``
(:class:`DataSource`). dcloop's own:

======================  ================  ==========================================
config                  class             data
======================  ================  ==========================================
``data=digits``         :class:`Digits`        scikit-learn's embedded 8x8 digits
``data=folder``         :class:`ImageFolder`   ``root/<class>/<image>``
``data=csv``            :class:`CsvManifest`   a CSV ``path,label`` of images
``data=cifar10/mnist``  :class:`Torchvision`   torchvision's files already on disk
``data=audio_folder``   :class:`AudioFolder`   ``root/<class>/<sound file>``
``data=audio_synth``    :class:`AudioSynth`    embedded synthetic spoken digits
``data=text_*``         :mod:`dcloop.data.text`  texts (CSV / JSONL, synthetic)
``data=coco``           :class:`dcloop.beyond.detection.CocoSource`  COCO box crops
======================  ================  ==========================================

File sources read every file once at setup (``on_bad_file``: fail naming the unreadable ones,
or leave them out, listed in ``skipped_files``) and keep the decoded data in memory
(``cache=true``, when it fits in a quarter of the machine's memory). With ``test_root`` /
``test_manifest`` the test split is that separate set and all of ``root`` is train + val;
otherwise ``test_frac`` and ``val_frac`` of the rows are held out (stratified, seeded).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from dcloop._checks import check_bool
from dcloop.data.audio import SYNTH_CLASS_NAMES, audio_folder, audio_options, synthetic_digits
from dcloop.data.badfiles import check_on_bad_file
from dcloop.data.datasets import (
    TORCHVISION_NAMES,
    FileDataset,
    IndexedTensorDataset,
    _normalize_image_size,
    _normalize_mode,
    csv_manifest,
    decode_files,
    image_folder,
    torchvision_dataset,
)
from dcloop.data.digits import DIGITS_CLASS_NAMES, load_digits_full
from dcloop.data.splits import split_dataset, stratified_split_indices
from dcloop.data.truth import read_truth_manifest, truth_of

logger = logging.getLogger(__name__)

Splits = dict[str, Any]


@runtime_checkable
class DataSource(Protocol):
    """A data source: ``data.source: {_target_: ...}`` in a data config.

    ``load`` returns the ``train``/``val``/``test`` datasets of ``(x, y, index)`` items (each
    with ``labels``, ``sources``, ``source(i)``, ``with_labels``, ``with_transform``, like
    :class:`~dcloop.data.datasets.IndexedTensorDataset`) and the class names. Optional
    attributes, read after ``load``: ``net_kwargs`` (passed to the network's constructor when
    it takes those keywords, e.g. text's ``vocab_size``), ``skipped_files`` (``(path,
    reason)`` of files left out), ``sample_rate`` (audio, for augmentation), and
    ``true_labels(train_dataset)`` (``(N,)`` true class ids or ``None``: the run's ground
    truth for scoring, e.g. from ``truth_manifest``).
    """

    name: str

    def load(self, *, seed: int, val_frac: float, test_frac: float) -> tuple[Splits, list[str]]: ...


def _resize(ds: IndexedTensorDataset, size: tuple[int, int] | None) -> IndexedTensorDataset:
    """Resizes every image of an in-memory (N, C, H, W) dataset once, at load time."""
    x = ds.x
    if size is None or x.ndim != 4 or tuple(x.shape[-2:]) == size:
        return ds
    is_uint8 = x.dtype == torch.uint8
    xf = x.float().div_(255.0) if is_uint8 else x.float()
    out = F.interpolate(xf, size=size, mode="bilinear", align_corners=False, antialias=True)
    if is_uint8:
        out = out.clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)
    return ds._replace(x=out)


def _need(value: Any, key: str, what: str, name: str) -> Any:
    if value is None:
        raise ValueError(f"data source {name!r} needs {key}=<{what}>, got {key}=None")
    return value


class Digits:
    """scikit-learn's 1,797 handwritten 8x8 digits, embedded: nothing downloads.

    Args:
        image_size: resize every image once at load (``None``: keep 8x8).
    """

    name = "digits"

    def __init__(self, image_size: int | Sequence[int] | None = None) -> None:
        self.image_size = _normalize_image_size(image_size)

    def load(self, *, seed: int, val_frac: float, test_frac: float) -> tuple[Splits, list[str]]:
        full = _resize(load_digits_full(), self.image_size)
        splits = split_dataset(full, seed=seed, val_frac=val_frac, test_frac=test_frac)
        return splits, list(DIGITS_CLASS_NAMES)


class _Files:
    """Shared by the file sources: one decode of every file, the optional test set."""

    name = "files"
    _how = ""

    def __init__(self, root, test, on_bad_file: str, cache: bool, truth=None) -> None:
        self.root = _need(root, "root", self._how, self.name)
        self._test = test
        self.on_bad_file = check_on_bad_file(on_bad_file)
        self.cache = check_bool("cache", cache)
        self.skipped_files: list[tuple[str, str]] = []
        self.truth_manifest = truth
        self._truth: dict[str, int] | None = None  # {file: true class id} once loaded

    def true_labels(self, dataset) -> np.ndarray | None:
        """``(N,)`` true class ids of ``dataset``'s rows (``truth_manifest``), else ``None``."""
        return None if self._truth is None else truth_of(self._truth, dataset.sources)

    def _read(self, test: bool = False) -> tuple[FileDataset, list[str]]:
        raise NotImplementedError

    def load(self, *, seed: int, val_frac: float, test_frac: float) -> tuple[Splits, list[str]]:
        full, names = self._read()
        if self.truth_manifest is not None:  # checked against every listed file, before decoding
            listed = getattr(self, "manifest", None)
            self._truth = read_truth_manifest(
                self.truth_manifest, self.root, full.paths, names, listed_in=listed
            )
        full, self.skipped_files = decode_files(
            full, on_bad_file=self.on_bad_file, cache=self.cache
        )
        if self._test is None:
            return split_dataset(full, seed=seed, val_frac=val_frac, test_frac=test_frac), names
        splits = split_dataset(full, seed=seed, val_frac=val_frac, test_frac=0.0)
        test, test_names = self._read(test=True)
        test, _ = decode_files(test, cache=self.cache)
        unknown = [n for n in test_names if n not in names]
        if unknown:
            raise ValueError(
                f"the test set {str(self._test)!r} has class(es) {unknown[:5]} that the "
                f"training data {str(self.root)!r} does not have (classes: {names[:10]})"
            )
        mapping = np.asarray([names.index(n) for n in test_names], dtype=np.int64)
        test.num_classes, test.class_names = len(names), list(names)  # the training classes
        splits["test"] = test.with_labels(mapping[test.labels])
        return splits, names


class ImageFolder(_Files):
    """Your images, one sub-folder per class: ``root/<class>/**/<image>``.

    Args:
        root: the folder.
        test_root: a separate test folder with the same class sub-folders (an official test
            split); all of ``root`` is then train + val and ``test_frac`` is unused.
        image_size: ``None``, an int (square side) or ``(height, width)``; images are resized
            on read.
        mode: ``"RGB"`` or ``"L"`` / ``"grayscale"``.
        on_bad_file: ``"error"`` names the unreadable files; ``"skip"`` leaves them out.
        cache: decode every image once into memory (uint8; 32x32 RGB is 3 KB an image).
        truth_manifest: a CSV ``path,label`` (paths relative to ``root``) with the true label
            of every image, when the folders hold people's labels: detection and the noise
            estimate are then scored against it (:mod:`dcloop.data.truth`).
    """

    name = "folder"
    _how = "a folder with one sub-folder of images per class"

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        test_root: str | os.PathLike | None = None,
        image_size: int | Sequence[int] | None = 32,
        mode: str = "RGB",
        on_bad_file: str = "error",
        cache: bool = True,
        truth_manifest: str | os.PathLike | None = None,
    ) -> None:
        super().__init__(root, test_root, on_bad_file, cache, truth_manifest)
        self.test_root = test_root
        self.image_size, self.mode = _normalize_image_size(image_size), _normalize_mode(mode)

    def _read(self, test: bool = False):
        root = self.test_root if test else self.root
        return image_folder(root, image_size=self.image_size, mode=self.mode)


class CsvManifest(_Files):
    """Your images listed in a CSV with columns ``path,label`` (paths relative to ``root``).

    Labels are class names or integer ids (see :func:`dcloop.data.csv_manifest`).

    Args:
        root: the folder the manifest's paths are relative to.
        manifest: the CSV file (a relative path is also looked up in ``root``).
        test_manifest: a separate test manifest (same root and classes); then ``test_frac``
            is unused.
        image_size, mode, on_bad_file, cache: as :class:`ImageFolder`.
        truth_manifest: a CSV ``path,label`` listing the same files as ``manifest`` with their
            true labels (e.g. CIFAR-10N's human labels as ``manifest``): with ``noise=none``
            detection and the noise estimate are scored against it (:mod:`dcloop.data.truth`).
    """

    name = "csv"
    _how = "the folder that the manifest's paths are relative to"

    def __init__(
        self,
        root: str | os.PathLike,
        manifest: str | os.PathLike,
        *,
        test_manifest: str | os.PathLike | None = None,
        image_size: int | Sequence[int] | None = 32,
        mode: str = "RGB",
        on_bad_file: str = "error",
        cache: bool = True,
        truth_manifest: str | os.PathLike | None = None,
    ) -> None:
        super().__init__(root, test_manifest, on_bad_file, cache, truth_manifest)
        self.manifest = _need(manifest, "manifest", "CSV file with columns path,label", "csv")
        self.test_manifest = test_manifest
        self._names: list[str] | None = None  # the training manifest's classes, for the test one
        self.image_size, self.mode = _normalize_image_size(image_size), _normalize_mode(mode)

    def _read(self, test: bool = False):
        manifest = self.test_manifest if test else self.manifest
        names = self._names if test else None
        ds, names = csv_manifest(
            self.root, manifest, image_size=self.image_size, mode=self.mode, class_names=names
        )
        if not test:
            self._names = names
        return ds, names


class AudioFolder(_Files):
    """Your sound files (WAV/FLAC/OGG, read with soundfile), one sub-folder per class.

    Args:
        root: the folder.
        test_root: a separate test folder with the same class sub-folders.
        sample_rate: Hz; files at other rates are resampled.
        clip_seconds: every clip is cropped or zero-padded to this length.
        on_bad_file: as :class:`ImageFolder`.
        cache: decode every clip once into memory (float32; 1 s at 8 kHz is 32 KB).
    """

    name = "audio_folder"
    _how = "a folder with one sub-folder of sound files per class"

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        test_root: str | os.PathLike | None = None,
        sample_rate: int = 8000,
        clip_seconds: float = 0.75,
        on_bad_file: str = "error",
        cache: bool = True,
    ) -> None:
        super().__init__(root, test_root, on_bad_file, cache)
        opts = audio_options({"sample_rate": sample_rate, "clip_seconds": clip_seconds})
        self.test_root = test_root
        self.sample_rate, self.clip_seconds = opts["sample_rate"], float(opts["clip_seconds"])

    def _read(self, test: bool = False):
        root = self.test_root if test else self.root
        return audio_folder(root, sample_rate=self.sample_rate, clip_seconds=self.clip_seconds)


class AudioSynth:
    """The embedded audio default: synthetic spoken-digit-like clips, made in-process.

    Args:
        sample_rate, clip_seconds: as :class:`AudioFolder`.
        num_per_class: clips per class (10 classes).
        synth_seed: the data set itself (the run's seed picks splits and noise).
    """

    name = "audio_synth"

    def __init__(
        self,
        *,
        sample_rate: int = 8000,
        clip_seconds: float = 0.75,
        num_per_class: int = 150,
        synth_seed: int = 0,
    ) -> None:
        self.options = audio_options(
            {
                "sample_rate": sample_rate,
                "clip_seconds": clip_seconds,
                "num_per_class": num_per_class,
                "synth_seed": synth_seed,
            }
        )
        self.sample_rate = self.options["sample_rate"]

    def load(self, *, seed: int, val_frac: float, test_frac: float) -> tuple[Splits, list[str]]:
        o = self.options
        full = synthetic_digits(
            num_per_class=o["num_per_class"],
            sample_rate=o["sample_rate"],
            clip_seconds=o["clip_seconds"],
            seed=o["synth_seed"],
        )
        splits = split_dataset(full, seed=seed, val_frac=val_frac, test_frac=test_frac)
        return splits, list(SYNTH_CLASS_NAMES)


class Torchvision:
    """CIFAR-10 or MNIST from torchvision's files already under ``root`` (never downloaded).

    The official train set is split into train/val (``val_frac`` of it goes to val;
    ``test_frac`` is unused) and the official test set is the test split.

    Args:
        name: ``"cifar10"`` or ``"mnist"``.
        root: the folder holding ``cifar-10-batches-py/`` or ``MNIST/raw/``.
        image_size: resize every image once at load (``None``: keep 32x32 / 28x28).
    """

    def __init__(
        self, name: str, root: str | os.PathLike, *, image_size: int | Sequence[int] | None = None
    ) -> None:
        if name not in TORCHVISION_NAMES:
            raise ValueError(f"name must be one of {list(TORCHVISION_NAMES)}, got {name!r}")
        self.name = name
        where = {"cifar10": "the folder holding 'cifar-10-batches-py/'"}
        self.root = _need(root, "root", where.get(name, "the folder holding 'MNIST/raw/'"), name)
        self.image_size = _normalize_image_size(image_size)

    def load(self, *, seed: int, val_frac: float, test_frac: float) -> tuple[Splits, list[str]]:
        full = torchvision_dataset(self.name, self.root, train=True)
        test = torchvision_dataset(self.name, self.root, train=False)
        tr, va, _ = stratified_split_indices(
            full.labels, seed=seed, val_frac=val_frac, test_frac=0.0
        )
        splits = {"train": full.subset(tr), "val": full.subset(va), "test": test}
        splits = {k: _resize(v, self.image_size) for k, v in splits.items()}
        return splits, list(full.class_names or [str(k) for k in range(10)])


#: Sources :class:`~dcloop.data.LabelNoiseDataModule` builds from a name alone.
BY_NAME: dict[str, type] = {"digits": Digits, "audio_synth": AudioSynth}


def named_source(name: str) -> DataSource:
    """The source called ``name`` (``"digits"``, ``"audio_synth"``); clear error otherwise."""
    if name in BY_NAME:
        return BY_NAME[name]()
    hint = {
        "folder": "ImageFolder(root=...)  (config: data=folder data.source.root=...)",
        "csv": "CsvManifest(root=..., manifest=...)  (config: data=csv)",
        "cifar10": "Torchvision('cifar10', root=...)  (config: data=cifar10)",
        "mnist": "Torchvision('mnist', root=...)  (config: data=mnist)",
        "audio_folder": "AudioFolder(root=...)  (config: data=audio_folder)",
    }
    if name in hint:
        raise ValueError(
            f"source={name!r} needs its files: pass the source object dcloop.data.{hint[name]}"
        )
    raise ValueError(
        f"source must be one of {list(BY_NAME)} or a source object with .name and "
        f".load(seed=, val_frac=, test_frac=) (dcloop.data.ImageFolder, CsvManifest, "
        f"Torchvision, AudioFolder, ...), got {name!r}"
    )


def check_source(source: Any) -> DataSource:
    """``source`` as a :class:`DataSource` (a name in :data:`BY_NAME` is built); else an error."""
    if isinstance(source, str):
        return named_source(source)
    if not (
        isinstance(getattr(source, "name", None), str) and callable(getattr(source, "load", None))
    ):
        raise ValueError(
            f"data.source must be a name in {list(BY_NAME)} or an object with a str .name and "
            f".load(seed=, val_frac=, test_frac=), got {type(source).__name__}"
        )
    return source


LEGACY_KEYS = (
    "root",
    "manifest",
    "image_size",
    "mode",
    "audio",
    "on_bad_file",
    "cache",
    "test_root",
)
#: ^ the data options of a run folder written before sources were objects.


def legacy_source(name: str, options: dict[str, Any]) -> tuple[DataSource, dict[str, Any]]:
    """A source from a run folder written before sources were objects (``source: folder``
    with ``root``, ``manifest``, ``image_size``, ``mode``, ``audio``, ``on_bad_file``, ``cache``
    and ``test_root`` beside it); returns the source and the options left for the data module.
    """
    opts = dict(options)
    opts.pop("source", None)
    take = {k: opts.pop(k) for k in list(opts) if k in LEGACY_KEYS}
    audio = dict(take.pop("audio", None) or {})
    if name == "digits":
        src: DataSource = Digits(image_size=take.get("image_size"))
    elif name == "audio_synth":
        src = AudioSynth(**audio)
    elif name in TORCHVISION_NAMES:
        src = Torchvision(name, take.get("root"), image_size=take.get("image_size"))
    else:
        files = {k: take[k] for k in ("on_bad_file", "cache") if k in take}
        if name == "audio_folder":
            audio = {k: audio[k] for k in ("sample_rate", "clip_seconds") if k in audio}
            src = AudioFolder(take.get("root"), test_root=take.get("test_root"), **audio, **files)
        else:
            image = {k: take[k] for k in ("image_size", "mode") if k in take}
            if name == "folder":
                src = ImageFolder(
                    take.get("root"), test_root=take.get("test_root"), **image, **files
                )
            elif name == "csv":
                src = CsvManifest(take.get("root"), take.get("manifest"), **image, **files)
            else:
                raise ValueError(f"unknown data source {name!r}")
    return src, opts
