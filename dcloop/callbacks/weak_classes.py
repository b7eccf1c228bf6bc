"""Weak classes between epochs: stronger augmentation and oversampling where the model is weak."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import numpy as np
from omegaconf import OmegaConf

from dcloop._checks import check_choice, check_float, check_int
from dcloop.augment.weak import RULES, weak_classes
from dcloop.callbacks.confident_learning import ConfidentLearning
from dcloop.timing import timed_hook

log = logging.getLogger(__name__)


class WeakClasses(L.Callback):
    """After each confident-learning step, pick the weak classes and update the policy.

    Runs the weak-class rule (:func:`~dcloop.augment.weak.weak_classes`) on the OOF buffer with
    the step's flags and estimated class noise rates, then gives the weak classes ``level``
    and oversampling ``oversample`` in the :class:`~dcloop.augment.AugmentPolicy` (every other
    class goes back to the base level). The policy is read by the sampler in the main process
    when the next epoch starts, so persistent workers see the change through the keys.

    A listener of the trainer's :class:`ConfidentLearning` (anywhere in the callback list): it
    registers itself at setup and runs on each verdict, so the list order does not matter.

    Args:
        policy: the policy to update (default: ``trainer.datamodule.augmenter.policy``).
        rule, k, threshold: see :func:`~dcloop.augment.weak.weak_classes`.
        level: augmentation level of weak classes (``None``: the data module's augmenter's
            ``weak_level``, else 3).
        oversample: sampling factor of weak classes (``None``: the augmenter's, else 1).
        every_n_epochs: run on every n-th confident-learning step.

    Attributes:
        first_weak: ``(C,)`` int64, the epoch each class first became weak (-1: never).
        weak: ``(C,)`` bool, the current weak classes.
        history: one row per step (epoch, weak classes, scores).
    """

    def __init__(
        self,
        policy=None,
        *,
        rule: str = "bottom_k",
        k: int = 3,
        threshold: float = 0.8,
        level: int | None = 3,
        oversample: float | None = 1.0,
        every_n_epochs: int = 1,
    ) -> None:
        check_choice("rule", rule, RULES)
        check_int("k", k, minimum=0)
        if level is not None:
            check_int("level", level, minimum=0)
        check_int("every_n_epochs", every_n_epochs, minimum=1)
        check_float("threshold", threshold, low=0, high=1)
        if oversample is not None:
            check_float("oversample", oversample, low=0, low_open=True)
        self.policy = policy
        self.rule, self.k, self.threshold = rule, k, threshold
        self.level, self.oversample = level, oversample
        self.every_n_epochs = every_n_epochs
        self.first_weak: np.ndarray | None = None
        self.weak: np.ndarray | None = None
        self.history: list[dict[str, Any]] = []
        self._steps = 0
        self._cl: ConfidentLearning | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(rule=self.rule, k=self.k, threshold=self.threshold)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._cl = ConfidentLearning.listen(trainer, self, "acts on confident learning's verdicts")
        aug = getattr(trainer.datamodule, "augmenter", None)
        if self.policy is None:
            self.policy = getattr(aug, "policy", None)
        if self.level is None:  # from the augment config (from_augment)
            self.level = int(getattr(aug, "weak_level", 3))
        if self.oversample is None:
            self.oversample = float(getattr(aug, "oversample", 1.0))
        if self.policy is None:
            raise ValueError(
                "WeakClasses needs an AugmentPolicy: pass policy=, or use a data module with "
                "an `augmenter` (LabelNoiseDataModule(augment=Augmenter.from_config("
                "{'kind': 'targeted', ...})))"
            )
        c = self.policy.num_classes
        if self.rule == "bottom_k" and self.k > c:
            raise ValueError(f"k={self.k} weak classes asked for, but there are only {c} classes")
        if self.first_weak is None:
            self.first_weak = np.full(c, -1, dtype=np.int64)
            self.weak = np.zeros(c, dtype=bool)
        self._apply()

    def _apply(self) -> None:
        if self.policy is not None and self.weak is not None:
            self.policy.set_classes(self.weak, level=self.level, weight=self.oversample)

    @timed_hook("policy_update")  # seconds into metrics.json timing (dcloop.timing)
    def on_verdict(self, trainer: L.Trainer, pl_module: L.LightningModule, cl) -> None:
        """After confident learning's step (called by it): update the weak classes."""
        epoch = trainer.current_epoch + 1  # 1-based, as the confident-learning history
        if cl.last_result is None:
            return
        self._steps += 1
        if (self._steps - 1) % self.every_n_epochs:
            return
        res = cl.last_result
        result = weak_classes(
            pl_module.samples.labels,
            cl.collector.probs,
            flags=res.flags,
            class_noise_rate=res.class_noise_rate,
            rule=self.rule,
            k=self.k,
            threshold=self.threshold,
        )
        weak = result.weak.cpu().numpy()
        self.first_weak = np.where(weak & (self.first_weak < 0), epoch, self.first_weak)
        self.weak = weak
        self._apply()
        classes = np.flatnonzero(weak).tolist()
        score = result.score.cpu().numpy()
        self.history.append(
            {"epoch": epoch, "weak": classes, "score": [round(float(s), 4) for s in score]}
        )
        pl_module.log_dict(
            {
                "weak/num_weak": float(weak.sum()),
                "weak/score_min": float(score.min()),
                "weak/score_weak_mean": float(score[weak].mean()) if weak.any() else 1.0,
            },
            on_epoch=True,
            on_step=False,
            sync_dist=trainer.world_size > 1,  # the same on every rank (broadcast verdict)
        )
        if trainer.is_global_zero:
            log.info("epoch %d: weak classes %s (scores %s)", epoch, classes, np.round(score, 3))

    @classmethod
    def from_augment(cls, augment: Any) -> WeakClasses | None:
        """The rule an ``augment`` config asks for: one with ``kind: targeted``, else ``None``
        (``conf/callbacks/default.yaml`` lists it this way, so it follows ``augment=``)."""
        spec = OmegaConf.to_container(augment) if OmegaConf.is_config(augment) else augment
        if not spec or spec.get("kind", "none") != "targeted":
            return None
        # level and oversample: the augmenter's own (its defaults apply), read at setup
        return cls(level=None, oversample=None, **dict(spec.get("weak") or {}))

    def run_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """``metrics.json``'s ``augment`` section: the augmenter's settings, weak-class history."""
        aug = getattr(trainer.datamodule, "augmenter", None)
        if aug is None:
            return {"augment": {"weak_history": self.history}}
        return {
            "augment": {
                "kind": aug.kind,
                "modality": aug.modality,
                "level": aug.level,
                "weak_level": aug.weak_level,
                "oversample": aug.oversample,
                "weak_history": self.history,
            }
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "history": list(self.history),
            "first_weak": None if self.first_weak is None else self.first_weak.tolist(),
            "weak": None if self.weak is None else self.weak.tolist(),
            "steps": self._steps,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        self._steps = int(state_dict.get("steps", 0))
        if state_dict.get("first_weak") is not None:
            self.first_weak = np.asarray(state_dict["first_weak"], dtype=np.int64)
            self.weak = np.asarray(
                state_dict.get("weak") or [False] * len(self.first_weak), dtype=bool
            )
            self._apply()
