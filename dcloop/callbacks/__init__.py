"""Lightning callbacks: thin hooks over dcloop's functional core."""

from dcloop.callbacks.checkpoint import EpochCheckpoint
from dcloop.callbacks.confident_learning import ConfidentLearning
from dcloop.callbacks.data_health import DataHealth
from dcloop.callbacks.oof import OOFCollector
from dcloop.callbacks.results import RunResults
from dcloop.callbacks.weak_classes import WeakClasses
from dcloop.callbacks.weak_groups import WeakGroups

__all__ = [
    "ConfidentLearning",
    "DataHealth",
    "EpochCheckpoint",
    "OOFCollector",
    "RunResults",
    "WeakClasses",
    "WeakGroups",
]
