"""Networks and the fold-parallel LightningModule."""

from dcloop.models.classifier import Classifier
from dcloop.models.fold_ensemble import FoldEnsemble
from dcloop.models.losses import fold_masked_loss
from dcloop.models.nets import MLP, SmallCNN

__all__ = ["Classifier", "FoldEnsemble", "MLP", "SmallCNN", "fold_masked_loss"]
