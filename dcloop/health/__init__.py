"""Data health beside label errors: outliers, near-duplicates, train/test leakage,
underperforming groups, test-only patterns and class imbalance, from embeddings.

Pure functions, torch in and torch out (numpy is accepted and becomes a CPU tensor), shaped
like :mod:`dcloop.cl`; :class:`dcloop.callbacks.DataHealth` gathers the embeddings in the
training loop and writes ``data_issues/*.csv``. See ``docs/health.md``.

* :func:`knn` -- exact k-nearest neighbours in row chunks (bounded memory, any device).
* :func:`find_outliers` -- mean kNN distance, Datalab's IQR cutoff (:func:`fence`);
  ``scale="log_similarity"`` for sparse features.
* :func:`find_far_groups` -- small groups far from every other sample (which a kNN distance
  does not see: a group is its own neighbourhood).
* :func:`token_rarity`, :func:`find_rare_texts` -- off-topic texts by the mean inverse
  document frequency of their tokens.
* :func:`text_duplicates` -- pairs of texts sharing most of their tokens (Jaccard, exact).
* :func:`image_properties` -- cleanvision-style image properties (measured, not a default).
* :func:`find_near_duplicates`, :func:`find_leakage` -- pairs inside a set, and test samples
  with a near-duplicate in training (distance and nearest/second-nearest ratio).
* :func:`pixel_leakage` -- the same for images from their pixels (no model needed).
* :func:`audio_signature`, :func:`audio_leakage` -- outliers and copies of audio clips from
  their log-mel spectrograms and waveforms (no model needed).
* :func:`underperforming_groups` -- k-means clusters with low held-out accuracy.
* :func:`find_test_only` -- test samples far from all training samples, grouped.
* :func:`class_imbalance` -- the rarest class, Datalab's rule.
"""

from dcloop.health.audio import audio_leakage, audio_signature, waveform_distance
from dcloop.health.duplicates import Leakage, NearDuplicates, find_leakage, find_near_duplicates
from dcloop.health.features import outputs, replica_outputs
from dcloop.health.groups import Groups, kmeans, underperforming_groups
from dcloop.health.imbalance import Imbalance, class_imbalance
from dcloop.health.knn import Neighbours, knn
from dcloop.health.outliers import FarGroups, Outliers, fence, find_far_groups, find_outliers
from dcloop.health.pixels import (
    PixelPairs,
    gaussian_blur,
    mutual_ratio,
    pixel_leakage,
    pixel_signature,
)
from dcloop.health.properties import image_properties
from dcloop.health.rarity import find_rare_texts, token_rarity
from dcloop.health.test_only import OnlyInTest, find_test_only
from dcloop.health.textdup import TextPairs, text_duplicates

__all__ = [
    "FarGroups",
    "Groups",
    "Imbalance",
    "Leakage",
    "NearDuplicates",
    "Neighbours",
    "Outliers",
    "PixelPairs",
    "TextPairs",
    "OnlyInTest",
    "audio_leakage",
    "audio_signature",
    "class_imbalance",
    "fence",
    "find_far_groups",
    "find_leakage",
    "find_near_duplicates",
    "find_outliers",
    "find_rare_texts",
    "image_properties",
    "kmeans",
    "knn",
    "outputs",
    "pixel_leakage",
    "pixel_signature",
    "gaussian_blur",
    "mutual_ratio",
    "replica_outputs",
    "text_duplicates",
    "token_rarity",
    "find_test_only",
    "underperforming_groups",
    "waveform_distance",
]
