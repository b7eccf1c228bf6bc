"""Weak groups between epochs: targeted augmentation for a cluster of the embedding, not only a
class (issue 22: underperforming groups feed the weak-class rule)."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import numpy as np
from omegaconf import OmegaConf

from dcloop._checks import check_bool, check_float, check_int
from dcloop.callbacks.confident_learning import ConfidentLearning
from dcloop.errors import UserInputError
from dcloop.health import underperforming_groups

log = logging.getLogger(__name__)


class WeakGroups(L.Callback):
    """After each confident-learning step, find the underperforming groups of the held-out
    embedding and raise their samples' augmentation level and oversampling.

    A weak class is a whole label; a weak *group* is a region of the embedding where the
    held-out replicas are wrong far more often than elsewhere (a kind of sample the model has
    not learnt: the roman "I" with stray lines), whatever its labels. The group comes from
    :func:`~dcloop.health.underperforming_groups` on the OOF pass's held-out embeddings
    (:attr:`OOFCollector.features`) and probabilities; its samples get ``level`` and
    ``oversample`` through :meth:`AugmentPolicy.set_samples
    <dcloop.augment.AugmentPolicy.set_samples>`, on top of their class's (the weak-class rule,
    :class:`WeakClasses`, keeps working beside it). A step with no embedding buffer (a net
    with no embedding, DDP) leaves the policy as it is.

    Args:
        policy: the policy to update (default: ``trainer.datamodule.augmenter.policy``).
        threshold: a group is weak below this share of the overall held-out accuracy.
        min_size: smallest group that counts.
        level: augmentation level of the weak groups' samples (``None``: the augmenter's
            ``weak_level``, else 3).
        oversample: their sampling factor (``None``: the augmenter's, else 1).

    Attributes:
        history: one row per step (epoch, groups flagged, samples raised).
        boosted: ``(N,)`` bool, the samples raised now (``None`` before the first step).
    """

    def __init__(
        self,
        policy=None,
        *,
        threshold: float = 0.5,
        min_size: int = 5,
        level: int | None = 3,
        oversample: float | None = 1.0,
    ) -> None:
        check_float("weak_groups.threshold", threshold, low=0.0, high=1.0, low_open=True)
        check_int("weak_groups.min_size", min_size, minimum=1)
        if level is not None:
            check_int("weak_groups.level", level, minimum=0)
        if oversample is not None:
            check_float("weak_groups.oversample", oversample, low=0, low_open=True)
        self.policy = policy
        self.threshold, self.min_size = threshold, min_size
        self.level, self.oversample = level, oversample
        self.history: list[dict[str, Any]] = []
        self.boosted: np.ndarray | None = None

    @classmethod
    def when(cls, enabled: bool, augment: Any = None, **kwargs: Any) -> WeakGroups | None:
        """The callback when ``enabled`` (config ``callbacks.weak_groups.enabled``), which
        needs ``augment=targeted`` (the policy it updates); else ``None``."""
        if not check_bool("weak_groups.enabled", enabled):
            return None
        spec = OmegaConf.to_container(augment) if OmegaConf.is_config(augment) else augment
        kind = (spec or {}).get("kind", "none")
        if kind != "targeted":
            raise UserInputError(
                f"callbacks.weak_groups.enabled=true needs augment=targeted (a policy to "
                f"update); got augment kind {kind!r}"
            )
        # level and oversample: the augmenter's (read at setup) unless the config sets them
        kwargs.setdefault("level", None)
        kwargs.setdefault("oversample", None)
        return cls(**kwargs)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(threshold=self.threshold, min_size=self.min_size)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        ConfidentLearning.listen(trainer, self, "acts on confident learning's steps")
        aug = getattr(trainer.datamodule, "augmenter", None)
        if self.policy is None:
            self.policy = getattr(aug, "policy", None)
        if self.level is None:
            self.level = int(getattr(aug, "weak_level", 3))
        if self.oversample is None:
            self.oversample = float(getattr(aug, "oversample", 1.0))
        if self.policy is None:
            raise ValueError(
                "WeakGroups needs an AugmentPolicy: pass policy=, or use a data module with an "
                "`augmenter` (augment=targeted)"
            )
        self._apply()

    def _apply(self) -> None:
        if self.policy is not None and self.boosted is not None:
            self.policy.set_samples(self.boosted, level=self.level, weight=self.oversample)

    def on_verdict(self, trainer: L.Trainer, pl_module: L.LightningModule, cl) -> None:
        """After confident learning's step (called by it): update the weak groups."""
        feats = getattr(cl.collector, "features", None)
        if cl.last_result is None or feats is None or cl.collector.probs is None:
            return
        groups = underperforming_groups(
            feats,
            pl_module.samples.labels,
            cl.collector.probs.float(),
            min_size=self.min_size,
            threshold=self.threshold,
        )
        self.boosted = groups.flags.cpu().numpy()
        self._apply()
        epoch = trainer.current_epoch + 1
        flagged = np.flatnonzero(groups.flagged.cpu().numpy()).tolist()
        self.history.append({"epoch": epoch, "groups": flagged, "samples": int(self.boosted.sum())})
        if trainer.is_global_zero:
            log.info(
                "epoch %d: %d weak groups, %d samples raised to level %d",
                epoch,
                len(flagged),
                int(self.boosted.sum()),
                self.level,
            )

    def run_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """``metrics.json``'s ``weak_groups`` section: the rule's settings and one row per step
        (epoch, the flagged groups, how many samples were raised)."""
        return {
            "weak_groups": {
                "threshold": self.threshold,
                "min_size": self.min_size,
                "level": self.level,
                "oversample": self.oversample,
                "history": list(self.history),
            }
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "history": list(self.history),
            "boosted": None if self.boosted is None else np.flatnonzero(self.boosted).tolist(),
            "n": None if self.boosted is None else int(self.boosted.shape[0]),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        if state_dict.get("boosted") is not None:
            self.boosted = np.zeros(int(state_dict["n"]), dtype=bool)
            self.boosted[state_dict["boosted"]] = True
            self._apply()
