"""Stop the fold replicas once their verdict holds (``kept=student``).

With the student kept, the K fold replicas only have to reach a verdict: which labels are
wrong and what they should be. Once the flagged set stops moving between confident-learning
steps, more replica epochs cost time and change little; the student then trains for the full
``trainer.max_epochs`` on the verdict.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch

from dcloop._checks import check_float, check_int
from dcloop.callbacks.confident_learning import ConfidentLearning

log = logging.getLogger(__name__)


def jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    """``|a & b| / |a | b|`` of two boolean masks; 1 when both are empty."""
    a, b = a.bool(), b.bool()
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


class VerdictStop(L.Callback):
    """End the replicas' training once ``patience`` steps in a row flag nearly one set.

    After each confident-learning step (a listener of the trainer's
    :class:`ConfidentLearning`), the step's flagged set is compared with the last step's by
    their Jaccard index; ``patience`` steps in a row at ``stable`` or above set
    ``trainer.should_stop``, and this epoch is the replicas' last. Steps paused by the guard
    or before cleaning is ready run no verdict and do not count.

    Args:
        stable: the Jaccard index in ``(0, 1]`` at which two steps' flags count as the same.
        patience: steps in a row (each against the one before) that must hold, ``>= 1``.
        floor: the replicas run at least this many epochs, whatever their verdict (``0``: no
            floor).

    Attributes:
        stopped_epoch: the (1-based) epoch after which the replicas stopped, ``None`` if they
            ran their schedule out.
        history: per step, ``{"epoch", "jaccard"}`` (``jaccard`` ``None`` at the first).
    """

    def __init__(self, stable: float = 0.95, patience: int = 3, floor: int = 0) -> None:
        self.stable = check_float("replica_stop.stable", stable, low=0, high=1, low_open=True)
        self.patience = check_int("replica_stop.patience", patience, minimum=1)
        self.floor = check_int("replica_stop.floor (epochs)", floor, minimum=0)
        self.stopped_epoch: int | None = None
        self.history: list[dict[str, Any]] = []
        self._last: torch.Tensor | None = None
        self._streak = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        ConfidentLearning.listen(trainer, self, "reads confident learning's flags")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.stopped_epoch is not None:  # resumed after the stop: no more replica epochs
            trainer.should_stop = True

    def on_verdict(self, trainer: L.Trainer, pl_module: L.LightningModule, cl) -> None:
        """After confident learning's step (called by it): compare its flags with the last."""
        if cl.last_result is None:
            return
        epoch = trainer.current_epoch + 1
        flags = cl.last_result.flags.detach().bool().cpu()
        score = None if self._last is None else jaccard(flags, self._last)
        self._last = flags
        self.history.append({"epoch": epoch, "jaccard": score})
        self._streak = self._streak + 1 if score is not None and score >= self.stable else 0
        if self._streak >= self.patience and epoch >= self.floor:
            if self.stopped_epoch is None:
                self.stopped_epoch = epoch
                if trainer.is_global_zero:
                    log.info(
                        "epoch %d: the verdict holds (flags' Jaccard >= %g for %d steps): the "
                        "fold replicas stop here; the student trains on their verdict",
                        epoch,
                        self.stable,
                        self.patience,
                    )
            trainer.should_stop = True

    def summary(self) -> dict[str, Any]:
        """For ``metrics.json``: the rule, the epoch the replicas stopped at, per-step Jaccard."""
        return {
            "stable": self.stable,
            "patience": self.patience,
            "floor": self.floor,
            "stopped_epoch": self.stopped_epoch,
            "history": list(self.history),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "stopped_epoch": self.stopped_epoch,
            "history": list(self.history),
            "streak": self._streak,
            "last": None if self._last is None else self._last.clone(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.stopped_epoch = state_dict.get("stopped_epoch")
        self.history = list(state_dict.get("history", []))
        self._streak = int(state_dict.get("streak", 0))
        last = state_dict.get("last")
        self._last = None if last is None else torch.as_tensor(last).bool()
