"""Datasets whose items are ``(x, y, index)``.

Every dataset dcloop trains on yields ``(x, y, index)``: ``x`` a float32 tensor (C, H, W),
``y`` the given (possibly noisy) integer label and ``index`` the row of the sample in the
split's label table (``0..N-1``). The index is what lets the training loop write out-of-fold
predictions and per-sample statistics back to the right row.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

from dcloop._checks import as_label_array, check_label_range, parse_class_labels, preview
from dcloop.data.badfiles import bad_files_error, check_on_bad_file
from dcloop.errors import UserInputError

logger = logging.getLogger(__name__)

Transform = Callable[[Tensor], Tensor]

#: File extensions (lower case) that :func:`image_folder` treats as images.
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
)

_MODES = {"RGB": "RGB", "L": "L", "GRAY": "L", "GREY": "L", "GRAYSCALE": "L"}

TORCHVISION_NAMES: tuple[str, ...] = ("cifar10", "mnist")


def _normalize_mode(mode: str) -> str:
    key = str(mode).upper()
    if key not in _MODES:
        raise ValueError(
            f"mode must be 'RGB' (3 channels) or 'L' / 'grayscale' (1 channel), got {mode!r}"
        )
    return _MODES[key]


def _normalize_image_size(image_size: Any) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, bool):
        raise ValueError(f"image_size must be None, an int or (height, width), got {image_size!r}")
    if isinstance(image_size, (int, np.integer)):
        size = (int(image_size), int(image_size))
    elif isinstance(image_size, Sequence) and len(image_size) == 2:
        size = (int(image_size[0]), int(image_size[1]))
    else:
        raise ValueError(f"image_size must be None, an int or (height, width), got {image_size!r}")
    if min(size) < 1:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    return size


def _check_sources(sources: Sequence[str] | None, n: int) -> list[str] | None:
    if sources is None:
        return None
    out = [str(s) for s in sources]
    if len(out) != n:
        raise ValueError(f"sources must have one entry per sample ({n}), got {len(out)}")
    return out


class IndexedTensorDataset(Dataset):
    """In-memory tensors with labels; items are ``(x, y, index)``.

    ``x`` may be floating point (returned as float32 unchanged), uint8 (returned as float32
    divided by 255, so large image sets can stay compact in memory) or int32/int64 (token
    ids, returned as int64 unchanged).

    Args:
        x: Inputs, shape (N, ...) — normally (N, C, H, W).
        labels: Given integer labels, array-like of shape (N,).
        transform: Optional callable applied to each ``x[i]`` (a float32 tensor) on access.
        sources: Optional human-readable origin of each row, length N (e.g. ``"digits:17"``).
        num_classes: Number of classes C if known; labels are then checked to lie in ``[0, C)``.
        class_names: Optional names of the C classes.

    Attributes:
        x: The input tensor, shape (N, ...).
        labels: ``np.ndarray`` int64, shape (N,).
        num_classes: ``int`` or ``None`` when unknown.
        class_names: ``list[str]`` or ``None``.
        transform: The per-item transform or ``None``.
    """

    def __init__(
        self,
        x: Tensor,
        labels: Any,
        *,
        transform: Transform | None = None,
        sources: Sequence[str] | None = None,
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        if not isinstance(x, Tensor):
            raise ValueError(f"x must be a torch.Tensor of shape (N, ...), got {type(x).__name__}")
        if x.ndim < 1:
            raise ValueError("x must have a leading sample dimension (N, ...), got a scalar")
        if x.dtype not in (torch.uint8, torch.int32, torch.int64) and not x.dtype.is_floating_point:
            raise ValueError(
                f"x must be a floating point, uint8 or int32/int64 (token ids) tensor, "
                f"got dtype {x.dtype}"
            )
        self.labels = as_label_array(labels)
        if self.labels.shape[0] != x.shape[0]:
            raise ValueError(
                f"x has {x.shape[0]} samples but labels has {self.labels.shape[0]}; "
                "they must have the same length N"
            )
        if num_classes is not None:
            num_classes = int(num_classes)
            check_label_range(self.labels, num_classes)
        if class_names is not None:
            class_names = [str(c) for c in class_names]
            if num_classes is not None and len(class_names) != num_classes:
                raise ValueError(
                    f"class_names has {len(class_names)} entries but num_classes={num_classes}"
                )
        if transform is not None and not callable(transform):
            raise ValueError(f"transform must be callable or None, got {transform!r}")
        self.x = x
        self.num_classes = num_classes
        self.class_names = class_names
        self.transform = transform
        self._sources = _check_sources(sources, int(x.shape[0]))

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, i: int) -> tuple[Tensor, int, int]:
        i = int(i)
        x = self.x[i]
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        elif x.dtype in (torch.int32, torch.int64):  # token ids
            x = x.to(torch.int64)
        else:
            x = x.to(torch.float32)
            if self.transform is not None:
                x = x.clone()  # an in-place transform must not alter the stored data
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.labels[i]), i

    def source(self, i: int) -> str:
        """Returns where row ``i`` came from: ``sources[i]`` or ``"row:{i}"``."""
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"row {i} is out of range for a dataset of {len(self)} samples")
        return self._sources[i] if self._sources is not None else f"row:{i}"

    @property
    def sources(self) -> list[str]:
        """The origin of every row, length N."""
        return [self.source(i) for i in range(len(self))]

    def _replace(self, **changes: Any) -> IndexedTensorDataset:
        kwargs: dict[str, Any] = {
            "x": self.x,
            "labels": self.labels,
            "transform": self.transform,
            "sources": self._sources,
            "num_classes": self.num_classes,
            "class_names": self.class_names,
        }
        kwargs.update(changes)
        x = kwargs.pop("x")
        labels = kwargs.pop("labels")
        return IndexedTensorDataset(x, labels, **kwargs)

    def with_labels(self, new_labels: Any) -> IndexedTensorDataset:
        """Returns a dataset sharing ``x`` (no copy) with ``new_labels`` (N,) as given labels."""
        new = as_label_array(new_labels, name="new_labels")
        if new.shape[0] != len(self):
            raise ValueError(f"new_labels must have length {len(self)}, got {new.shape[0]}")
        return self._replace(labels=new)

    def with_transform(self, transform: Transform | None) -> IndexedTensorDataset:
        """Returns a dataset sharing ``x`` and labels with a different per-item transform."""
        return self._replace(transform=transform)

    def subset(self, indices: Any) -> IndexedTensorDataset:
        """Returns the rows ``indices`` as a new dataset whose index runs ``0..len(indices)-1``.

        Sources are carried over, so ``subset(idx).source(k) == self.source(idx[k])``.
        """
        idx = as_label_array(indices, name="indices")
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise ValueError(
                f"indices must lie in [0, {len(self)}), got min {idx.min()} max {idx.max()}"
            )
        t = torch.as_tensor(idx, dtype=torch.long)
        return self._replace(
            x=self.x[t], labels=self.labels[idx], sources=[self.source(int(i)) for i in idx]
        )


def _load_image(path: str, mode: str, size: tuple[int, int] | None) -> Tensor:
    """Reads one image file as a float32 tensor (C, H, W) in [0, 1]."""
    try:
        with Image.open(path) as img:
            img = img.convert(mode)
            if size is not None and (img.height, img.width) != size:
                img = img.resize((size[1], size[0]), Image.BILINEAR)
            arr = np.asarray(img, dtype=np.float32) / 255.0
    except FileNotFoundError as err:
        raise FileNotFoundError(f"image file not found: {path}") from err
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise OSError(f"could not read image file {path}: {err}") from err
    except Image.DecompressionBombError as err:  # a bomb is a bad file (on_bad_file=skip)
        raise OSError(f"could not read image file {path}: {err}") from err
    if arr.ndim == 2:
        arr = arr[None, :, :]
    else:
        arr = np.ascontiguousarray(arr.transpose(2, 0, 1))
    return torch.from_numpy(arr)


@dataclass(frozen=True)
class ImageReader:
    """Reads an image file as float32 ``(C, H, W)`` in [0, 1] with PIL.

    Args:
        image_size: ``None`` (keep each file's size: then all files must share one size to be
            batched), an int (square side) or ``(height, width)``.
        mode: ``"RGB"`` (3 channels) or ``"L"``/``"grayscale"`` (1 channel).
    """

    image_size: tuple[int, int] | None = None
    mode: str = "RGB"

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_size", _normalize_image_size(self.image_size))
        object.__setattr__(self, "mode", _normalize_mode(self.mode))

    def __call__(self, path: str) -> Tensor:
        return _load_image(path, self.mode, self.image_size)

    @staticmethod
    def to_cache(x: Tensor) -> Tensor:
        """``x`` as :func:`decode_files` keeps it: 8-bit pixels (4x less memory, exact);
        :class:`IndexedTensorDataset` divides uint8 by 255 on access."""
        return x.mul(255.0).round_().to(torch.uint8)


Reader = Callable[[str], Tensor]


def _memory_budget() -> int:
    """Bytes a decoded dataset may take: a quarter of the machine's memory."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    except (ValueError, OSError, AttributeError):  # not POSIX
        return 8 << 30


class FileDataset(Dataset):
    """Files read lazily by ``reader``; items are ``(x, y, index)``.

    One class for every file modality: images (:class:`ImageReader`), sound
    (:class:`dcloop.data.audio.AudioReader`) or a reader of your own (any picklable callable
    ``path -> Tensor``; data-loader workers pickle it).

    Args:
        paths: File paths, length N.
        labels: Given integer labels, array-like (N,).
        reader: ``path -> Tensor`` (float32). An optional ``to_cache`` method says how
            :func:`decode_files` stores its output in memory (images: uint8).
        transform: Optional callable applied to each item's tensor.
        num_classes: Number of classes C if known; labels are checked to lie in ``[0, C)``.
        class_names: Optional names of the C classes.

    Attributes:
        paths: ``list[str]``, length N.
        labels: ``np.ndarray`` int64, shape (N,).
        reader, transform, num_classes, class_names: as given.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        labels: Any,
        reader: Reader,
        *,
        transform: Transform | None = None,
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        if not callable(reader):
            raise ValueError(f"reader must be a callable path -> Tensor, got {reader!r}")
        self.paths = [os.fspath(p) for p in paths]
        self.labels = as_label_array(labels)
        if self.labels.shape[0] != len(self.paths):
            raise ValueError(
                f"{len(self.paths)} paths but {self.labels.shape[0]} labels; they must have the "
                "same length N"
            )
        if num_classes is not None:
            num_classes = int(num_classes)
            check_label_range(self.labels, num_classes)
        if class_names is not None:
            class_names = [str(c) for c in class_names]
            if num_classes is not None and len(class_names) != num_classes:
                raise ValueError(
                    f"class_names has {len(class_names)} entries but num_classes={num_classes}"
                )
        if transform is not None and not callable(transform):
            raise ValueError(f"transform must be callable or None, got {transform!r}")
        self.reader = reader
        self.transform = transform
        self.num_classes = num_classes
        self.class_names = class_names

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Tensor, int, int]:
        i = int(i)
        x = self.reader(self.paths[i])
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.labels[i]), i

    def source(self, i: int) -> str:
        """Returns the file path of row ``i``."""
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"row {i} is out of range for a dataset of {len(self)} samples")
        return self.paths[i]

    @property
    def sources(self) -> list[str]:
        """The file path of every row, length N."""
        return list(self.paths)

    def _replace(self, paths: Sequence[str], labels: np.ndarray, **changes: Any) -> FileDataset:
        kwargs: dict[str, Any] = {
            "transform": self.transform,
            "num_classes": self.num_classes,
            "class_names": self.class_names,
        }
        kwargs.update(changes)
        return FileDataset(paths, labels, self.reader, **kwargs)

    def with_labels(self, new_labels: Any) -> FileDataset:
        """Returns a dataset over the same files with ``new_labels`` (N,) as given labels."""
        new = as_label_array(new_labels, name="new_labels")
        if new.shape[0] != len(self):
            raise ValueError(f"new_labels must have length {len(self)}, got {new.shape[0]}")
        return self._replace(self.paths, new)

    def with_transform(self, transform: Transform | None) -> FileDataset:
        """Returns a dataset over the same files and labels with a different transform."""
        return self._replace(self.paths, self.labels, transform=transform)

    def subset(self, indices: Any) -> FileDataset:
        """Returns the rows ``indices`` as a new dataset whose index runs ``0..len(indices)-1``."""
        idx = as_label_array(indices, name="indices")
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise ValueError(
                f"indices must lie in [0, {len(self)}), got min {idx.min()} max {idx.max()}"
            )
        return self._replace([self.paths[int(i)] for i in idx], self.labels[idx])


def decode_files(
    dataset: FileDataset, *, on_bad_file: str = "error", cache: bool = True, max_bytes=None
) -> tuple[IndexedTensorDataset | FileDataset, list[tuple[str, str]]]:
    """Reads every file of ``dataset`` once: checks it, and keeps it in memory if ``cache``.

    Args:
        dataset: the files.
        on_bad_file: ``"error"``: raise, naming the unreadable files; ``"skip"``: leave them
            out (returned as ``(path, reason)``).
        cache: keep the decoded tensors (an :class:`IndexedTensorDataset` is returned) when
            they share one shape and fit in ``max_bytes`` (default: a quarter of the memory).

    Returns:
        ``(dataset, skipped)``.

    Raises:
        ValueError: with ``on_bad_file="error"`` if any file cannot be read (up to five named,
            with the count), or if none can.
    """
    check_on_bad_file(on_bad_file)
    budget = _memory_budget() if max_bytes is None else int(max_bytes)
    to_cache = getattr(dataset.reader, "to_cache", lambda x: x)
    kept: list[Tensor] | None = [] if cache else None
    skipped: list[tuple[str, str]] = []
    good: list[int] = []
    shape = None
    for i, path in enumerate(dataset.paths):
        try:
            x = dataset.reader(path)
        except (OSError, ValueError, RuntimeError) as err:
            skipped.append((path, f"{type(err).__name__}: {err}"))
            continue
        good.append(i)
        if kept is None:
            continue
        c = to_cache(x)
        if shape is None:
            shape, item_bytes = x.shape, c.nbytes
            if item_bytes * len(dataset) > budget:
                logger.warning(
                    "%d files decode to %.1f GB, over the %.1f GB memory budget: reading them "
                    "from disk every epoch instead (set cache=false to silence this)",
                    len(dataset),
                    item_bytes * len(dataset) / 1e9,
                    budget / 1e9,
                )
                kept = None
                continue
        elif x.shape != shape:
            logger.info(
                "files decode to different shapes (%s: %s, %s: %s); set image_size to decode "
                "them once into memory",
                dataset.paths[good[0]],
                tuple(shape),
                path,
                tuple(x.shape),
            )
            kept = None
            continue
        kept.append(c)
    if skipped:
        if on_bad_file == "error" or not good:
            raise bad_files_error(skipped, len(dataset), on_bad_file)
        logger.warning("skipping %d unreadable file(s), e.g. %s", len(skipped), skipped[0][0])
    if kept is None or not good:
        return (dataset.subset(good) if skipped else dataset), skipped
    return (
        IndexedTensorDataset(
            torch.stack(kept),
            dataset.labels[good],
            transform=dataset.transform,
            sources=[dataset.paths[i] for i in good],
            num_classes=dataset.num_classes,
            class_names=dataset.class_names,
        ),
        skipped,
    )


def class_folder(
    root: str | os.PathLike, extensions: Sequence[str], *, what: str, how: str
) -> tuple[list[str], np.ndarray, list[str]]:
    """``root/<class name>/**/<file>``: the files, their class ids and the class names.

    Class names are the sub-folder names in sorted order; class ``k`` is ``class_names[k]``.
    Files are found recursively, matched case-insensitively against ``extensions``; hidden
    files and folders (starting with ``.``) are skipped. Rows are ordered by class, then path.

    Raises:
        FileNotFoundError: If ``root`` does not exist or is not a directory.
        ValueError: If there are no class sub-folders or a class folder holds no file.
    """
    base = _require_dir(root, f"{what} folder root", how)
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    if not exts:
        raise ValueError("extensions must name at least one file extension, e.g. ('.png',)")
    class_dirs = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise ValueError(f"no class sub-folders found in {str(base)!r}. {how}")
    names = [p.name for p in class_dirs]
    paths: list[str] = []
    labels: list[int] = []
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
        paths += sorted(files)
        labels += [label] * len(files)
    if empty:
        raise ValueError(
            f"class folder(s) with no {what} files in {str(base)!r}: {preview(empty)}; "
            f"accepted extensions are {', '.join(exts)}"
        )
    logger.info("%s folder %s: %d files in %d classes", what, base, len(paths), len(names))
    return paths, np.asarray(labels, dtype=np.int64), names


def _require_dir(root: str | os.PathLike, what: str, how: str) -> Path:
    path = Path(root).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {str(path)!r} does not exist. {how}")
    if not path.is_dir():
        raise FileNotFoundError(f"{what} {str(path)!r} is not a directory. {how}")
    return path


def image_folder(
    root: str | os.PathLike,
    *,
    image_size: int | tuple[int, int] | None = None,
    mode: str = "RGB",
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
) -> tuple[FileDataset, list[str]]:
    """Loads a class-per-sub-folder image tree (``root/<class name>/**/<image>``).

    Class names are the sub-folder names in sorted order; class ``k`` is ``class_names[k]``.
    Files are found recursively, matched case-insensitively against ``extensions``; hidden
    files and folders (starting with ``.``) are skipped. Rows are ordered by class, then path.

    Args:
        root: Folder holding one sub-folder per class.
        image_size: ``None``, an int (square side) or ``(height, width)``.
        mode: ``"RGB"`` or ``"L"``/``"grayscale"``.
        extensions: Accepted file extensions, e.g. ``(".png", ".jpg")``.

    Returns:
        ``(dataset, class_names)``: a :class:`FileDataset` read with :class:`ImageReader`.

    Raises:
        FileNotFoundError: If ``root`` does not exist or is not a directory.
        ValueError: If there are no class sub-folders or a class folder holds no images.
    """
    reader = ImageReader(image_size, mode)
    how = "Pass root=<folder with one sub-folder of images per class>, e.g. root/cat/1.png."
    paths, labels, names = class_folder(root, extensions, what="image", how=how)
    ds = FileDataset(paths, labels, reader, num_classes=len(names), class_names=names)
    return ds, names


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _check_duplicate_paths(full: Sequence[str], raw: Sequence[str], mpath: Path) -> None:
    """A file listed twice with two labels is an error; twice with one label, a warning."""
    first: dict[str, tuple[int, str]] = {}
    repeated = 0
    for row, (path, lab) in enumerate(zip(full, raw, strict=True)):
        key = os.path.normpath(path)
        if key not in first:
            first[key] = (row, lab)
            continue
        row0, lab0 = first[key]
        if lab != lab0:
            raise UserInputError(
                f"manifest {str(mpath)!r}: {key!r} is listed twice with different labels, "
                f"{lab0!r} (row {row0 + 2}) and {lab!r} (row {row + 2}, as a spreadsheet numbers "
                "them); list each file once"
            )
        repeated += 1
    if repeated:
        logger.warning(
            "manifest %s lists %d file(s) more than once (same label); each copy is a sample "
            "and copies can land in different splits",
            mpath,
            repeated,
        )


def csv_manifest(
    root: str | os.PathLike,
    manifest: str | os.PathLike,
    *,
    image_size: int | tuple[int, int] | None = None,
    mode: str = "RGB",
    class_names: Sequence[str] | None = None,
) -> tuple[FileDataset, list[str]]:
    """Loads images listed in a CSV manifest with columns ``path,label``.

    Paths are relative to ``root`` (absolute paths are used as they are). Labels are either
    integer class ids or class names:

    * with ``class_names`` given, a label equal to a class name maps to it (names win over
      ids), else it must be an integer id in ``[0, len(class_names))``;
    * without it, integer labels give ``class_names = ["0", ..., str(max)]``, name labels
      give the sorted unique names, and a mix of the two is an error.

    This is the rule of every label column dcloop reads (text files and label files too):
    :func:`dcloop._checks.parse_class_labels`.

    The manifest file is only read, never modified.

    Args:
        root: Folder the manifest paths are relative to.
        manifest: The CSV file; if relative and not found as given, it is looked up in ``root``.
        image_size: ``None``, an int (square side) or ``(height, width)``.
        mode: ``"RGB"`` or ``"L"``/``"grayscale"``.
        class_names: Optional class names; class ``k`` is ``class_names[k]``.

    Returns:
        ``(dataset, class_names)``.

    Raises:
        FileNotFoundError: If ``root``, the manifest or any listed image file is missing
            (up to five missing files are named, with the count).
        ValueError: If columns are missing, the manifest is empty or labels are invalid.
    """
    how = "Pass root=<image folder> and manifest=<CSV with columns path,label>."
    base = _require_dir(root, "image root", how)
    mpath = Path(manifest).expanduser()
    if not mpath.is_file() and not mpath.is_absolute() and (base / mpath).is_file():
        mpath = base / mpath
    if not mpath.is_file():
        raise FileNotFoundError(
            f"manifest not found: {str(Path(manifest))!r} (also looked in {str(base)!r}). {how}"
        )
    try:
        df = pd.read_csv(mpath, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError as err:
        raise ValueError(f"manifest {str(mpath)!r} is empty; expected columns path,label") from err
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise UserInputError(
            f"manifest {str(mpath)!r} is not a readable CSV ({_first_line(err)}); expected "
            "UTF-8 text with columns path,label"
        ) from err
    df.columns = [str(c).strip() for c in df.columns]
    missing_cols = [c for c in ("path", "label") if c not in df.columns]
    if missing_cols:
        raise ValueError(
            f"manifest {str(mpath)!r} lacks column(s) {missing_cols}; expected columns path,label, "
            f"found {list(df.columns)}"
        )
    if len(df) == 0:
        raise ValueError(f"manifest {str(mpath)!r} has no rows; expected one row per image")
    paths = [p.strip() for p in df["path"].tolist()]
    raw = [lab.strip() for lab in df["label"].tolist()]
    blank = [k for k, (p, lab) in enumerate(zip(paths, raw, strict=True)) if not p or not lab]
    if blank:
        raise ValueError(
            f"manifest {str(mpath)!r} has empty path or label in {len(blank)} row(s), "
            f"rows {[i + 2 for i in blank[:5]]} (as a spreadsheet numbers them, header row 1)"
        )

    where = f"manifest {str(mpath)!r}"
    labels, names = parse_class_labels(raw, class_names, where=where, row_offset=2)

    full = [p if os.path.isabs(p) else str(base / p) for p in paths]
    _check_duplicate_paths(full, raw, mpath)
    missing = [p for p in full if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} image file(s) listed in {str(mpath)!r} do not exist: "
            f"{preview(missing)}. Paths are read relative to root={str(base)!r}."
        )
    logger.info("csv_manifest %s: %d images in %d classes", mpath, len(full), len(names))
    reader = ImageReader(image_size, mode)
    ds = FileDataset(full, labels, reader, num_classes=len(names), class_names=names)
    return ds, list(names)


def torchvision_dataset(name: str, root: str | os.PathLike, *, train: bool) -> IndexedTensorDataset:
    """Loads CIFAR-10 or MNIST from a local folder with torchvision (never downloads).

    The images are held in memory as uint8 and returned as float32 in [0, 1]:
    CIFAR-10 items are (3, 32, 32), MNIST items (1, 28, 28). Sources read
    ``"<name>:<train|test>:<row>"``.

    Args:
        name: ``"cifar10"`` or ``"mnist"``.
        root: Folder that holds ``cifar-10-batches-py/`` (CIFAR-10) or ``MNIST/raw/`` (MNIST).
        train: The official training set if True, else the official test set.

    Returns:
        An :class:`IndexedTensorDataset` with ``num_classes=10`` and the class names.

    Raises:
        ValueError: If ``name`` is not one of the supported datasets.
        FileNotFoundError: If the dataset files are not under ``root``.
    """
    from torchvision import datasets as tvd

    key = str(name).lower().replace("-", "").replace("_", "")
    if key not in TORCHVISION_NAMES:
        raise ValueError(f"name must be one of {list(TORCHVISION_NAMES)}, got {name!r}")
    if root is None:
        raise ValueError(f"{key} needs root=<folder holding the dataset files>, got None")
    expected = {
        "cifar10": "the extracted 'cifar-10-batches-py' folder (data_batch_1..5, test_batch, "
        "batches.meta)",
        "mnist": "'MNIST/raw/' with train-images-idx3-ubyte, train-labels-idx1-ubyte, "
        "t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (uncompressed)",
    }[key]
    path = Path(root).expanduser()
    hint = f"Place {expected} inside {str(path)!r}; dcloop never downloads data."
    if not path.is_dir():
        raise FileNotFoundError(f"{key} root {str(path)!r} does not exist. {hint}")
    cls = tvd.CIFAR10 if key == "cifar10" else tvd.MNIST
    try:
        tv = cls(str(path), train=train, download=False)
    except RuntimeError as err:
        raise FileNotFoundError(
            f"{key} files not found or corrupt under {str(path)!r}. {hint}"
        ) from err
    if key == "cifar10":
        x = torch.from_numpy(np.ascontiguousarray(np.asarray(tv.data).transpose(0, 3, 1, 2)))
    else:
        x = torch.as_tensor(tv.data).unsqueeze(1).contiguous()
    split = "train" if train else "test"
    labels = as_label_array(np.asarray(tv.targets))
    sources = [f"{key}:{split}:{i}" for i in range(len(labels))]
    return IndexedTensorDataset(
        x,
        labels,
        sources=sources,
        num_classes=len(tv.classes),
        class_names=[str(c) for c in tv.classes],
    )


def _is_int_like(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, np.integer)):
        return True
    if isinstance(value, Tensor):
        return value.ndim == 0 and not value.dtype.is_floating_point and value.dtype != torch.bool
    return False


_ITEM_HINT = (
    "dcloop needs dataset items (x, y, index), where index is the integer row of the sample "
    "(0..N-1). Use dcloop.data.IndexedTensorDataset for tensors, or wrap an (x, y) dataset "
    "with dcloop.data.WithIndex(dataset)."
)


def check_item(item: Any) -> None:
    """Checks that a dataset item is ``(x, y, index)`` with an integer ``index``.

    Args:
        item: One item, ``dataset[i]``.

    Raises:
        ValueError: Explaining the expected item layout and how to get it.
    """
    if not isinstance(item, (tuple, list)):
        raise ValueError(f"dataset item is a {type(item).__name__}, not a tuple. {_ITEM_HINT}")
    if len(item) != 3:
        raise ValueError(f"dataset item has {len(item)} element(s), expected 3. {_ITEM_HINT}")
    if not _is_int_like(item[2]):
        raise ValueError(
            f"dataset item's third element (index) is {item[2]!r} of type "
            f"{type(item[2]).__name__}, expected an int. {_ITEM_HINT}"
        )


class WithIndex(Dataset):
    """Wraps a dataset of ``(x, y)`` items into ``(x, y, index)`` items.

    Args:
        dataset: Any map-style dataset whose items are ``(x, y)`` with an integer ``y``.

    Attributes:
        dataset: The wrapped dataset.
    """

    def __init__(self, dataset: Dataset) -> None:
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise ValueError(
                f"WithIndex needs a map-style dataset with __getitem__ and __len__, "
                f"got {type(dataset).__name__}"
            )
        self.dataset = dataset
        self._labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Any, int, int]:
        i = int(i)
        item = self.dataset[i]
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            n = len(item) if isinstance(item, (tuple, list)) else type(item).__name__
            raise ValueError(f"WithIndex expects items (x, y) from the wrapped dataset, got {n}")
        x, y = item
        return x, int(y), i

    @property
    def labels(self) -> np.ndarray:
        """Labels (N,) int64: from the wrapped dataset's ``targets``/``labels`` if present,
        otherwise read once from every item (may be slow for image files)."""
        if self._labels is None:
            for attr in ("targets", "labels"):
                if hasattr(self.dataset, attr):
                    self._labels = as_label_array(getattr(self.dataset, attr))
                    break
            else:
                self._labels = as_label_array([self[i][1] for i in range(len(self))])
        return self._labels

    def source(self, i: int) -> str:
        """Returns ``"row:{i}"``."""
        return f"row:{int(i)}"
