"""dcloop's data layer: datasets of ``(x, y, index)`` items, label noise, the data module."""

from dcloop.data.datamodule import SOURCES, LabelNoiseDataModule
from dcloop.data.datasets import (
    IMAGE_EXTENSIONS,
    ImageFileDataset,
    IndexedTensorDataset,
    WithIndex,
    check_item,
    csv_manifest,
    image_folder,
    torchvision_dataset,
)
from dcloop.data.digits import load_digits_full, load_digits_splits
from dcloop.data.noise import (
    NOISE_KINDS,
    NoiseResult,
    empirical_noise_matrix,
    inject_noise,
    save_noise,
)
from dcloop.data.sampling import EpochShuffleSampler
from dcloop.data.splits import stratified_split_indices

__all__ = [
    "IMAGE_EXTENSIONS",
    "NOISE_KINDS",
    "SOURCES",
    "EpochShuffleSampler",
    "ImageFileDataset",
    "IndexedTensorDataset",
    "LabelNoiseDataModule",
    "NoiseResult",
    "WithIndex",
    "check_item",
    "csv_manifest",
    "empirical_noise_matrix",
    "image_folder",
    "inject_noise",
    "load_digits_full",
    "load_digits_splits",
    "save_noise",
    "stratified_split_indices",
    "torchvision_dataset",
]
