"""Targeted augmentation: the weak-class rule, per-level image/audio ops, the policy sampler."""

from dcloop.augment.audio import AUDIO_OPS, AudioAugment, audio_transforms, augment_audio
from dcloop.augment.image import IMAGE_OPS, ImageAugment, image_transforms
from dcloop.augment.pipeline import KINDS, Augmenter
from dcloop.augment.policy import (
    AugKey,
    AugmentedDataset,
    AugmentPolicy,
    PolicySampler,
    epoch_counts,
)
from dcloop.augment.weak import RULES, WeakClassResult, class_recall, weak_classes

__all__ = [
    "AUDIO_OPS",
    "IMAGE_OPS",
    "KINDS",
    "RULES",
    "AudioAugment",
    "AugKey",
    "AugmentPolicy",
    "AugmentedDataset",
    "Augmenter",
    "ImageAugment",
    "PolicySampler",
    "WeakClassResult",
    "audio_transforms",
    "augment_audio",
    "class_recall",
    "epoch_counts",
    "image_transforms",
    "weak_classes",
]
