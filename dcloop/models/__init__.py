"""Networks and the fold-parallel LightningModule.

The networks import with torch alone; the LightningModules and the config factory
(``Classifier``, ``FoldEnsemble``, ``module_kwargs``, ``net_factory``) on first use, so a
saved model rebuilds its network without lightning (``dcloop.load_model``).
"""

from dcloop.models.losses import fold_masked_loss
from dcloop.models.nets import MLP, SmallCNN
from dcloop.models.resnet_small import ResNetSmall
from dcloop.models.text import PretrainedText, TextBoW, TextCNN
from dcloop.models.torchvision_nets import torchvision_net

__all__ = [
    "MLP",
    "Classifier",
    "FoldEnsemble",
    "PretrainedText",
    "ResNetSmall",
    "SmallCNN",
    "TextBoW",
    "TextCNN",
    "fold_masked_loss",
    "module_kwargs",
    "net_factory",
    "torchvision_net",
]

_LAZY = {
    "Classifier": "classifier",
    "FoldEnsemble": "fold_ensemble",
    "module_kwargs": "factory",
    "net_factory": "factory",
}


def __getattr__(name: str):
    if name in _LAZY:  # lightning / hydra: only when asked for
        import importlib

        return getattr(importlib.import_module(f"dcloop.models.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
