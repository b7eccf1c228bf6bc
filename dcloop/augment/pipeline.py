"""What the data module needs from an ``augment`` config: loader, batch hook, callbacks."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from torch.utils.data import DataLoader, Dataset

from dcloop._checks import check_float, check_int
from dcloop.augment.audio import AUDIO_OPS, audio_transforms, augment_audio
from dcloop.augment.image import IMAGE_OPS, check_ops, image_transforms
from dcloop.augment.policy import AugmentedDataset, AugmentPolicy, PolicySampler
from dcloop.augment.weak import RULES
from dcloop.data.sampling import DistributedEpochSampler

log = logging.getLogger(__name__)

#: ``augment.kind`` values.
KINDS: tuple[str, ...] = ("none", "uniform", "targeted")
AUDIO_ON: tuple[str, ...] = ("worker", "batch")
_WEAK_KEYS = ("rule", "k", "threshold", "every_n_epochs")
_KEYS = (
    "kind",
    "levels",
    "level",
    "weak_level",
    "oversample",
    "p",
    "image_ops",
    "audio_ops",
    "audio_on",
    "weak",
    "text_ops",
    "synonyms",
    "synonym_table",
    "backtranslate",
)
#: Text ops used when a config does not name any (``backtranslate`` needs its hook).
DEFAULT_TEXT_OPS: tuple[str, ...] = ("synonym", "insert", "swap", "delete")


class Augmenter:
    """An augmentation setup: ``uniform`` (every class at ``level``) or ``targeted`` (every class
    at ``level``; the weak classes, chosen between epochs by
    :class:`~dcloop.callbacks.WeakClasses`, at ``weak_level`` and oversampled ``oversample``
    times).

    Images ``(C, H, W)`` are augmented in the DataLoader workers with albumentations; audio
    ``(C, T)`` either in the workers (``audio_on="worker"``) or on the device, on the whole
    batch, in the data module's ``on_after_batch_transfer`` (``audio_on="batch"``). Texts (a
    dataset with ``.texts`` and token ids ``(L,)``) are edited as strings in the workers and
    re-tokenised (:mod:`dcloop.augment.text`: EDA ops, back-translation hook).

    Args:
        kind: ``"uniform"`` or ``"targeted"`` (``"none"``: use no Augmenter at all).
        levels: L, the strongest level; levels run ``0`` (none) ... ``L``.
        level: the level of every class (targeted: of the classes that are not weak).
        weak_level: the level of weak classes (default ``levels``).
        oversample: sampling factor of weak samples (1 = no oversampling).
        p: probability that each op is applied to a sample.
        image_ops: names from :data:`~dcloop.augment.image.IMAGE_OPS`.
        audio_ops: names from :data:`~dcloop.augment.audio.AUDIO_OPS`.
        audio_on: ``"worker"`` or ``"batch"``.
        weak: options of the weak-class rule: ``rule``, ``k``, ``threshold``,
            ``every_n_epochs`` (see :func:`~dcloop.augment.weak.weak_classes`).
        text_ops: names from :data:`~dcloop.augment.text.TEXT_OPS`.
        synonyms: ``auto``, ``table``, ``wordnet``, ``cooccurrence`` or ``none``.
        synonym_table: a JSON / CSV synonym table (``synonyms=table``, or ``auto``).
        backtranslate: a callable ``list[str] -> list[str]`` or a ``_target_`` mapping.
    """

    def __init__(
        self,
        kind: str = "uniform",
        *,
        levels: int = 3,
        level: int = 1,
        weak_level: int | None = None,
        oversample: float = 1.0,
        p: float = 0.5,
        image_ops=tuple(IMAGE_OPS),
        audio_ops=tuple(AUDIO_OPS),
        audio_on: str = "batch",
        weak: Mapping[str, Any] | None = None,
        text_ops=DEFAULT_TEXT_OPS,
        synonyms: str = "auto",
        synonym_table: str | None = None,
        backtranslate: Any = None,
    ) -> None:
        from dcloop.augment.text import SYNONYM_SOURCES, TEXT_OPS, resolve_hook

        if kind not in ("uniform", "targeted"):
            raise ValueError(f"augment kind must be one of {list(KINDS)}; got {kind!r}")
        levels = check_int("augment.levels", levels, minimum=1)
        weak_level = levels if weak_level is None else weak_level
        for name, v in (("level", level), ("weak_level", weak_level)):
            check_int(f"augment.{name}", v, minimum=0, maximum=levels)
        check_float("augment.oversample", oversample, low=0, low_open=True)
        check_float("augment.p", p, low=0, high=1)
        check_ops(image_ops, IMAGE_OPS, "image")  # (a string is an error, not letters)
        check_ops(audio_ops, AUDIO_OPS, "audio")
        if audio_on not in AUDIO_ON:
            raise ValueError(f"augment audio_on must be one of {list(AUDIO_ON)}; got {audio_on!r}")
        weak = dict(weak or {})
        unknown = sorted(set(weak) - set(_WEAK_KEYS))
        if unknown:
            raise ValueError(f"augment.weak has unknown key(s) {unknown}; allowed: {_WEAK_KEYS}")
        if weak.get("rule", "bottom_k") not in RULES:
            raise ValueError(
                f"augment.weak.rule must be one of {list(RULES)}; got {weak['rule']!r}"
            )
        self.kind = kind
        self.levels, self.level, self.weak_level = int(levels), int(level), int(weak_level)
        self.oversample, self.p = float(oversample), float(p)
        self.image_ops, self.audio_ops = list(image_ops), list(audio_ops)
        self.audio_on = audio_on
        self.weak = weak
        check_ops(text_ops, TEXT_OPS, "text")
        if synonyms not in SYNONYM_SOURCES:
            raise ValueError(
                f"augment synonyms must be one of {list(SYNONYM_SOURCES)}; got {synonyms!r}"
            )
        self.text_ops, self.synonyms, self.synonym_table = list(text_ops), synonyms, synonym_table
        self.backtranslate = resolve_hook(backtranslate)
        self.synonym_source: str | None = None
        self.policy: AugmentPolicy | None = None
        self.modality: str | None = None
        self.sample_rate: int | None = None
        self._transforms: list = []

    @classmethod
    def from_config(cls, spec: Mapping[str, Any] | None) -> Augmenter | None:
        """An Augmenter from an ``augment`` config mapping; ``None`` for ``kind: none``."""
        if spec is None:
            return None
        if isinstance(spec, Augmenter):
            return spec
        if not isinstance(spec, Mapping):
            raise ValueError(f"augment must be a mapping with keys {list(_KEYS)}; got {spec!r}")
        spec = dict(spec)
        unknown = sorted(str(k) for k in spec if k not in _KEYS)
        if unknown:
            raise ValueError(f"augment has unknown key(s) {unknown}; allowed keys: {list(_KEYS)}")
        kind = spec.pop("kind", "none")
        if kind not in KINDS:
            raise ValueError(f"augment kind must be one of {list(KINDS)}; got {kind!r}")
        return None if kind == "none" else cls(kind, **spec)

    # ------------------------------------------------------------------ binding
    def bind(
        self, dataset: Dataset, labels, num_classes: int, *, sample_rate: int | None = None
    ) -> None:
        """Build the policy and the per-level transforms for a training set.

        The modality comes from the first item: ``x`` of shape ``(C, H, W)`` is an image,
        ``(C, T)`` a waveform (which needs ``sample_rate``).
        """
        x = dataset[0][0]
        if x.ndim == 1 and hasattr(dataset, "texts"):  # token ids of a text dataset
            from dcloop.augment.text import text_transforms

            self.modality = "text"
            self._transforms, self.synonym_source = text_transforms(
                self.text_ops,
                self.levels,
                p=self.p,
                texts=dataset.texts,
                synonyms=self.synonyms,
                synonym_table=self.synonym_table,
                backtranslate=self.backtranslate,
            )
        elif x.ndim == 3:
            self.modality = "image"
            size = (int(x.shape[1]), int(x.shape[2]))
            self._transforms = image_transforms(self.image_ops, self.levels, p=self.p, size=size)
        elif x.ndim == 2:
            if sample_rate is None:
                raise ValueError("audio augmentation needs the data's sample_rate; got None")
            self.modality, self.sample_rate = "audio", int(sample_rate)
            if self.audio_on == "worker":
                self._transforms = audio_transforms(
                    self.audio_ops, self.levels, sample_rate=self.sample_rate, p=self.p
                )
            else:
                self._transforms = [None] * (self.levels + 1)
        else:
            raise ValueError(
                f"augmentation needs inputs (C, H, W) (images), (C, T) (audio) or a text "
                f"dataset (token ids (L,) and .texts); got an item "
                f"of shape {tuple(x.shape)}"
            )
        self.policy = AugmentPolicy(
            labels, num_classes, num_levels=self.levels, base_level=self.level
        )
        log.info(
            "augment %s (%s): level %d of %d", self.kind, self.modality, self.level, self.levels
        )

    def _require_bound(self) -> AugmentPolicy:
        if self.policy is None:
            raise RuntimeError("Augmenter.bind() has not run yet (the data module's setup does it)")
        return self.policy

    # ------------------------------------------------------------------ loading
    def train_loader(
        self, dataset: Dataset, *, batch_size: int, num_workers: int, seed: int, trainer=None
    ) -> DataLoader:
        """Training loader: the policy sampler's keys into an :class:`AugmentedDataset`.

        Under DDP (``trainer.world_size > 1``) each rank gets its share of the one-process
        keys, in a ``DistributedSampler`` subclass so that Lightning does not re-shuffle it.
        """
        policy = self._require_bound()
        world = int(getattr(trainer, "world_size", 1) or 1) if trainer is not None else 1
        rank = int(trainer.global_rank) if world > 1 else 0
        sampler = PolicySampler(policy, seed=seed, num_replicas=world, rank=rank)
        if world > 1:
            sampler = DistributedEpochSampler(
                len(dataset), seed=seed, num_replicas=world, rank=rank, inner=sampler
            )
        if self.modality == "text":
            from dcloop.augment.text import TextAugmentedDataset

            wrapped = TextAugmentedDataset(dataset, self._transforms)
        else:
            wrapped = AugmentedDataset(dataset, self._transforms)
        return DataLoader(
            wrapped,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
            drop_last=False,
        )

    def on_batch(self, batch):
        """Device-side batch augmentation (audio with ``audio_on="batch"``); else unchanged.

        The levels are looked up on the device by ``index``: no host synchronisation.
        """
        if self.modality != "audio" or self.audio_on != "batch":
            return batch
        x, y, index = batch
        level = self._require_bound().level_tensor(x.device)[index]
        x = augment_audio(
            x,
            level,
            ops=self.audio_ops,
            num_levels=self.levels,
            sample_rate=self.sample_rate,
            p=self.p,
        )
        return x, y, index
