"""The data module dcloop trains with: splits, injected label noise and (x, y, index) loaders."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from dcloop._checks import check_callable, check_float, check_int
from dcloop.data.badfiles import write_skipped
from dcloop.data.datasets import FileDataset, IndexedTensorDataset, Transform
from dcloop.data.labelfile import apply_label_file
from dcloop.data.noise import NOISE_KINDS, NoiseResult, inject_noise, resolve_mapping, save_noise
from dcloop.data.sampling import train_sampler
from dcloop.data.sources import BY_NAME, DataSource, check_source
from dcloop.data.splits import _check_fracs
from dcloop.data.truth import with_truth
from dcloop.errors import UserInputError, quote

logger = logging.getLogger(__name__)

#: Sources :class:`LabelNoiseDataModule` takes by name (the others are objects, see
#: :mod:`dcloop.data.sources`).
SOURCES: tuple[str, ...] = tuple(BY_NAME)

_NOISE_KEYS = ("kind", "rate", "sparsity", "mapping")

SplitDataset = IndexedTensorDataset | FileDataset


#: What the data module calls on an augmenter (dcloop.augment.Augmenter has them all).
_AUGMENTER_METHODS = ("bind", "train_loader", "on_batch")


def _check_augmenter(augment: Any) -> Any:
    """``augment`` if it is ``None`` or an augmenter; a config mapping is named as an error.

    The data layer does not build augmenters (dcloop.augment is built on it): a mapping
    goes through :meth:`dcloop.augment.Augmenter.from_config` first.
    """
    if augment is None:
        return None
    missing = [m for m in _AUGMENTER_METHODS if not callable(getattr(augment, m, None))]
    if missing:
        hint = (
            "an augment config: build it with dcloop.augment.Augmenter.from_config(...) first"
            if isinstance(augment, Mapping)
            else f"it has no {missing}"
        )
        raise UserInputError(
            f"augment must be None or an augmenter (dcloop.augment.Augmenter); got "
            f"{quote(augment)}: {hint}"
        )
    return augment


def _parse_noise(noise: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validates a noise spec and fills defaults: ``{"kind", "rate", "sparsity"}``."""
    if noise is None:
        return {"kind": "none", "rate": 0.0, "sparsity": 0.0, "mapping": None}
    if not isinstance(noise, Mapping):
        raise ValueError(
            f"noise must be None or a mapping with keys {list(_NOISE_KEYS)}, got {noise!r}"
        )
    spec = dict(noise)
    unknown = sorted(str(k) for k in spec if k not in _NOISE_KEYS)
    if unknown:
        raise ValueError(
            f"noise has unknown key(s) {unknown}; allowed keys are {list(_NOISE_KEYS)}"
        )
    kind = spec.get("kind", "none")
    kind = "none" if kind is None else str(kind)
    if kind not in NOISE_KINDS:
        raise ValueError(f"noise kind must be one of {list(NOISE_KINDS)}, got {kind!r}")
    rate = spec.get("rate", 0.0)
    sparsity = spec.get("sparsity", 0.0)
    rate = check_float("noise rate", rate, low=0.0, high=1.0, high_open=True)
    sparsity = check_float("noise sparsity", sparsity or 0.0, low=0.0, high=1.0)
    mapping = spec.get("mapping")
    if mapping is not None and not isinstance(mapping, Mapping):
        raise ValueError(f"noise mapping must be a {{source: target}} map, got {mapping!r}")
    return {
        "kind": kind,
        "rate": rate,
        "sparsity": sparsity,
        "mapping": None if mapping is None else dict(mapping),
    }


class LabelNoiseDataModule(L.LightningDataModule):
    """Loads a data source, splits it, injects label noise into train, and serves loaders.

    Every loader yields batches of ``(x, y, index)``: ``x`` the input (float32 images
    (B, C, H, W), waveforms (B, 1, T) or token ids (B, L)), ``y`` the given label (B,) and
    ``index`` (B,) the row within that split. For the training split,
    ``y == given_labels[index]``.

    Args:
        source: a source object (:mod:`dcloop.data.sources`: ``ImageFolder(root)``,
            ``CsvManifest(root, manifest)``, ``Torchvision("cifar10", root)``,
            ``AudioFolder(root)``, the text and COCO sources, or your own
            :class:`~dcloop.data.sources.DataSource`), or the name of one that needs no
            arguments: ``"digits"`` (the embedded default) or ``"audio_synth"``.
        num_classes: Number of classes C; by default the number of class names found. A larger
            value is allowed only if every class still has training samples.
        noise: ``None`` (clean) or a mapping with keys ``kind`` (one of
            :data:`~dcloop.data.noise.NOISE_KINDS`), ``rate``, ``sparsity`` and ``mapping``.
        batch_size: Training batch size.
        eval_batch_size: Batch size of the out-of-fold, validation and test loaders.
        num_workers: DataLoader worker processes.
        seed: Seed of the split, of the noise and of the training order.
        val_frac: Validation fraction of all rows, in [0, 1).
        test_frac: Test fraction of all rows, in [0, 1) (unused by sources with their own test
            set: ``test_root``, ``test_manifest``, torchvision's official test split).
        train_transform: Optional callable on one input tensor, applied only by
            :meth:`train_dataloader` (augmentation).
        labels: Optional label file (CSV ``index,label[,source,weight,status]``, see
            :mod:`dcloop.data.labelfile`) that replaces the training split's given labels
            after noise injection; with injected noise the dataset's labels stay the ground
            truth. Rows with status ``confirmed``/``corrected`` are never flagged.
        augment: an augmenter, built above the data layer from an ``augment`` config
            (``kind: none|uniform|targeted``) by
            :meth:`dcloop.augment.Augmenter.from_config` (the data configs do it with a
            ``_target_``), or ``None``; the training loader then carries ``(index, level)``
            keys from the policy sampler to the workers.
    """

    def __init__(
        self,
        source: str | DataSource = "digits",
        *,
        num_classes: int | None = None,
        noise: Mapping[str, Any] | None = None,
        batch_size: int = 64,
        eval_batch_size: int = 512,
        num_workers: int = 0,
        seed: int = 0,
        val_frac: float = 0.15,
        test_frac: float = 0.2,
        train_transform: Transform | None = None,
        labels: str | os.PathLike | None = None,
        augment: Any = None,
    ) -> None:
        super().__init__()
        self._source_obj: DataSource = check_source(source)
        if num_classes is not None:
            num_classes = check_int("num_classes", num_classes, minimum=1)
        check_callable("train_transform", train_transform)
        check_int("seed", seed, minimum=0)
        _check_fracs(val_frac, test_frac)
        self.source = str(self._source_obj.name)
        self.noise_spec = _parse_noise(noise)
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.eval_batch_size = check_int("eval_batch_size", eval_batch_size, minimum=1)
        self.num_workers = check_int("num_workers", num_workers, minimum=0)
        self.seed = int(seed)
        self.val_frac = float(val_frac)
        self.test_frac = float(test_frac)
        self.train_transform = train_transform
        self._num_classes_arg = num_classes
        self.labels_file = labels
        self.label_override = None  # dcloop.people.LabelOverride once setup() read the file
        self.skipped_files: list[tuple[str, str]] = []  # (path, reason) with on_bad_file=skip
        self.augmenter = _check_augmenter(augment)  # None: train loader as before

        self._is_setup = False
        self.noise: NoiseResult | None = None
        self.train_dataset: SplitDataset | None = None
        self.val_dataset: SplitDataset | None = None
        self.test_dataset: SplitDataset | None = None
        self._train_augmented: SplitDataset | None = None
        self._eval_loaders: dict[int, DataLoader] = {}  # one per split (persistent workers)
        self._class_names: list[str] = []
        self._train_sources: list[str] | None = None
        self._input_shape: tuple[int, ...] = ()
        self._has_truth = False  # the source gave true labels (truth_manifest)

    # ------------------------------------------------------------------ loading
    def _load_splits(self) -> tuple[dict[str, SplitDataset], list[str]]:
        src = self._source_obj
        splits, names = src.load(seed=self.seed, val_frac=self.val_frac, test_frac=self.test_frac)
        missing = {"train", "val", "test"} - set(splits)
        if missing:
            raise ValueError(
                f"data source {self.source!r}: load() must return splits train, val and "
                f"test, missing {sorted(missing)}"
            )
        self.skipped_files = list(getattr(src, "skipped_files", None) or [])
        return splits, [str(n) for n in names]

    def _resolve_classes(self, names: list[str]) -> list[str]:
        c = self._num_classes_arg
        if c is None:
            return names
        if c < len(names):
            raise ValueError(
                f"num_classes={c} is smaller than the {len(names)} classes found in the data "
                f"({names[:10]}{'...' if len(names) > 10 else ''})"
            )
        return names + [str(k) for k in range(len(names), c)]

    def _describe(self) -> str:
        """``data source='csv' ('labels.csv')``: where the data came from, for messages."""
        src = self._source_obj
        where = next(
            (
                getattr(src, k)
                for k in ("manifest", "path", "annotations", "root")
                if getattr(src, k, None)
            ),
            None,
        )
        return f"data source={self.source!r}" + (f" ({str(where)!r})" if where else "")

    @staticmethod
    def _validate_train_labels(labels: np.ndarray, names: list[str]) -> None:
        c = len(names)
        bad = np.flatnonzero((labels < 0) | (labels >= c))
        if bad.size:
            raise ValueError(
                f"training labels must lie in [0, {c}); {bad.size} row(s) do not, e.g. row "
                f"{int(bad[0])} has label {int(labels[bad[0]])}"
            )
        counts = np.bincount(labels, minlength=c)
        empty = np.flatnonzero(counts == 0)
        if empty.size:
            shown = ", ".join(f"{int(k)} ({names[k]!r})" for k in empty[:10])
            raise ValueError(
                f"every class needs at least one training sample; class(es) without any: "
                f"{shown}{' ...' if empty.size > 10 else ''} ({empty.size} of {c}). Add samples, "
                "lower val_frac/test_frac, or fix num_classes."
            )

    def _source_truth(self, train: SplitDataset, c: int) -> np.ndarray | None:
        """The source's true labels of the training rows (``truth_manifest``), checked."""
        get = getattr(self._source_obj, "true_labels", None)
        truth = get(train) if callable(get) else None
        if truth is None:
            return None
        truth = np.asarray(truth)
        if truth.shape != train.labels.shape or not np.issubdtype(truth.dtype, np.integer):
            raise ValueError(
                f"{self._describe()}: true_labels() must give {len(train)} integer class ids, "
                f"got {truth.dtype} of shape {truth.shape}"
            )
        if truth.size and (truth.min() < 0 or truth.max() >= c):
            raise ValueError(f"{self._describe()}: true labels must lie in [0, {c})")
        return truth.astype(np.int64)

    def setup(self, stage: str | None = None) -> None:
        """Loads the splits and injects noise into train; does the work only once.

        Args:
            stage: Lightning stage (ignored; all splits are prepared together).

        Raises:
            ValueError: If training labels are out of range or a class has no training sample.
            FileNotFoundError: If the data files are missing.
        """
        if self._is_setup:
            return
        splits, names = self._load_splits()
        train = splits["train"]
        names = self._resolve_classes(names)
        if len(names) < 2:
            raise UserInputError(
                f"{self._describe()} has a single class, {names[0] if names else None!r}: "
                "finding label errors needs at least 2 classes"
            )
        self._validate_train_labels(train.labels, names)
        for split in ("val", "test"):
            labels = splits[split].labels
            if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
                raise ValueError(
                    f"{split} labels must lie in [0, {len(names)}), found {int(labels.max())}"
                )
        spec = self.noise_spec
        self.noise = inject_noise(
            train.labels,
            kind=spec["kind"],
            rate=spec["rate"],
            num_classes=len(names),
            seed=self.seed,
            sparsity=spec["sparsity"],
            mapping=None if spec["mapping"] is None else resolve_mapping(spec["mapping"], names),
        )
        truth = self._source_truth(train, len(names))
        if truth is not None:  # a truth manifest: the ground truth of real (people's) noise
            self.noise = with_truth(self.noise, truth)
        self._has_truth = truth is not None
        if self.labels_file is not None:  # people's labels (dcloop.people) replace the given
            self.noise, self.label_override = apply_label_file(
                self.noise, self.labels_file, train.sources, names
            )
        self._class_names = names
        self.train_dataset = train.with_labels(self.noise.given_labels)
        self._train_augmented = self.train_dataset.with_transform(self.train_transform)
        if self.augmenter is not None:  # dcloop.augment: per-class levels, policy sampler
            rate = getattr(self._source_obj, "sample_rate", None)
            self.augmenter.bind(
                self._train_augmented, self.noise.given_labels, len(names), sample_rate=rate
            )
        self.val_dataset = splits["val"]
        self.test_dataset = splits["test"]
        self._input_shape = tuple(int(s) for s in self.train_dataset[0][0].shape)
        self._is_setup = True
        logger.info(
            "data %s: %d train / %d val / %d test, %d classes, input %s, noise %s (%d %s)",
            self.source,
            len(self.train_dataset),
            len(self.val_dataset),
            len(self.test_dataset),
            len(names),
            self._input_shape,
            spec["kind"],
            self.noise.num_noisy,
            "wrong by the truth manifest" if self._has_truth else "flipped",
        )

    # ---------------------------------------------------------------- accessors
    def _require_setup(self) -> None:
        if not self._is_setup:
            raise RuntimeError(
                "LabelNoiseDataModule.setup() has not run yet; call dm.setup() first"
            )

    @property
    def is_setup(self) -> bool:
        """Whether :meth:`setup` has run."""
        return self._is_setup

    @property
    def num_classes(self) -> int:
        """Number of classes C."""
        self._require_setup()
        return len(self._class_names)

    @property
    def class_names(self) -> list[str]:
        """Class names, length C."""
        self._require_setup()
        return list(self._class_names)

    @property
    def num_train(self) -> int:
        """Number of training samples N."""
        self._require_setup()
        return len(self.train_dataset)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input ``x`` without augmentation, (C, H, W)."""
        self._require_setup()
        return self._input_shape

    @property
    def given_labels(self) -> np.ndarray:
        """Training labels after noise (what the model sees), int64 (N,)."""
        self._require_setup()
        return self.noise.given_labels

    @property
    def true_labels(self) -> np.ndarray:
        """Training labels before noise (or the truth manifest's), int64 (N,)."""
        self._require_setup()
        return self.noise.true_labels

    @property
    def is_noisy(self) -> np.ndarray:
        """Whether each training label was changed by the injected noise, bool (N,)."""
        self._require_setup()
        return self.noise.is_noisy

    @property
    def has_ground_truth(self) -> bool:
        """True when ``true_labels``/``is_noisy`` are a known truth: noise was injected, or the
        source gave the true labels (``data.source.truth_manifest``)."""
        self._require_setup()
        return self.noise.kind != "none" or self._has_truth

    @property
    def source_object(self) -> DataSource:
        """The source object (``data.source``; a name such as ``"digits"`` is built)."""
        return self._source_obj

    @property
    def net_kwargs(self) -> dict[str, Any]:
        """Keyword arguments the source gives the network (e.g. text: ``vocab_size``)."""
        self._require_setup()
        return dict(getattr(self._source_obj, "net_kwargs", None) or {})

    @property
    def train_sources(self) -> list[str]:
        """Where every training row came from (``source_of(i)`` for all i), listed once."""
        self._require_setup()
        if self._train_sources is None:
            self._train_sources = self.train_dataset.sources
        return self._train_sources

    def source_of(self, i: int) -> str:
        """Where training row ``i`` came from (file path, ``"digits:<row>"``, ...)."""
        self._require_setup()
        return self.train_dataset.source(i)

    # ------------------------------------------------------------------ loaders
    def _ensure_setup(self) -> None:
        if not self._is_setup:
            self.setup()

    def train_dataloader(self) -> DataLoader:
        """Training batches ``(x, y, index)`` with ``train_transform``, epoch-seeded shuffle."""
        self._ensure_setup()
        ds = self._train_augmented
        if self.augmenter is not None:  # (index, level) keys from the policy sampler
            return self.augmenter.train_loader(
                ds,
                batch_size=self.batch_size,
                num_workers=self.num_workers,
                seed=self.seed,
                trainer=self.trainer,
            )
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            sampler=train_sampler(len(ds), self.seed, self.trainer),  # sharded under DDP
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            drop_last=False,
        )

    def _eval_loader(self, ds: SplitDataset) -> DataLoader:
        """One loader per split and run: the OOF pass and validation run every epoch, so
        their workers persist instead of being started again each time."""
        cache = self._eval_loaders
        key = id(ds)
        if key not in cache or cache[key].dataset is not ds:
            cache[key] = DataLoader(
                ds,
                batch_size=self.eval_batch_size,
                shuffle=False,
                num_workers=self.num_workers,
                persistent_workers=self.num_workers > 0,
                drop_last=False,
            )
        return cache[key]

    def oof_dataloader(self) -> DataLoader:
        """Training set in row order, without augmentation (for out-of-fold predictions)."""
        self._ensure_setup()
        return self._eval_loader(self.train_dataset)

    def val_dataloader(self) -> DataLoader:
        """Validation batches ``(x, y, index)`` in row order."""
        self._ensure_setup()
        return self._eval_loader(self.val_dataset)

    def test_dataloader(self) -> DataLoader:
        """Test batches ``(x, y, index)`` in row order."""
        self._ensure_setup()
        return self._eval_loader(self.test_dataset)

    # --------------------------------------------------------------------- save
    def save(self, directory: str | os.PathLike) -> None:
        """Writes ``labels.csv`` and ``noise_matrix_true.csv`` for the training split.

        Args:
            directory: Output folder (created if needed).
        """
        self._require_setup()
        save_noise(self.noise, directory, sources=self.train_dataset.sources)
        write_skipped(self.skipped_files, directory)  # skipped_files.csv (on_bad_file=skip)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Training batches only: the augmenter's device-side batch augmentation (audio).

        Not the OOF pass, which runs at the training epoch's end with the module in eval mode.
        """
        trainer = getattr(self, "trainer", None)
        module = getattr(trainer, "lightning_module", None) if trainer is not None else None
        training = trainer is not None and trainer.training and getattr(module, "training", True)
        if self.augmenter is not None and training:
            return self.augmenter.on_batch(batch)
        return batch
