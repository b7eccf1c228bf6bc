"""dcloop's data layer: sources, (x, y, index) datasets, label noise, the data module.

The data module (``LabelNoiseDataModule``, ``SOURCES``) is imported on first use: it needs
lightning, and reading inputs the way a run did (``dcloop.load_model``) must not.
"""

from dcloop.data.datasets import (
    IMAGE_EXTENSIONS,
    FileDataset,
    ImageReader,
    IndexedTensorDataset,
    WithIndex,
    check_item,
    csv_manifest,
    decode_files,
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
from dcloop.data.sources import (
    AudioFolder,
    AudioSynth,
    CsvManifest,
    DataSource,
    Digits,
    ImageFolder,
    Torchvision,
)
from dcloop.data.splits import split_dataset, stratified_split_indices

__all__ = [
    "IMAGE_EXTENSIONS",
    "NOISE_KINDS",
    "SOURCES",
    "AudioFolder",
    "AudioSynth",
    "CsvManifest",
    "DataSource",
    "Digits",
    "EpochShuffleSampler",
    "FileDataset",
    "ImageFolder",
    "ImageReader",
    "IndexedTensorDataset",
    "LabelNoiseDataModule",
    "NoiseResult",
    "Torchvision",
    "WithIndex",
    "check_item",
    "csv_manifest",
    "decode_files",
    "empirical_noise_matrix",
    "image_folder",
    "inject_noise",
    "load_digits_full",
    "load_digits_splits",
    "save_noise",
    "split_dataset",
    "stratified_split_indices",
    "torchvision_dataset",
]


def __getattr__(name: str):
    if name in ("LabelNoiseDataModule", "SOURCES"):  # lightning: only when asked for
        from dcloop.data import datamodule

        return getattr(datamodule, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
