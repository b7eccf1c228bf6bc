"""Networks and the fold-parallel LightningModule."""

from dcloop.models.classifier import Classifier
from dcloop.models.factory import module_kwargs, net_factory
from dcloop.models.fold_ensemble import FoldEnsemble
from dcloop.models.losses import fold_masked_loss
from dcloop.models.nets import MLP, SmallCNN
from dcloop.models.text import PretrainedText, TextBoW, TextCNN
from dcloop.models.torchvision_nets import torchvision_net

__all__ = [
    "MLP",
    "Classifier",
    "FoldEnsemble",
    "PretrainedText",
    "SmallCNN",
    "TextBoW",
    "TextCNN",
    "fold_masked_loss",
    "module_kwargs",
    "net_factory",
    "torchvision_net",
]
