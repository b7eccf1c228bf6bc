"""Confident learning between epochs: flag, score, and prune or down-weight."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L

from dcloop.callbacks.oof import OOFCollector
from dcloop.cleaning import (
    ACTIONS,
    BACKENDS,
    FILTER_BY,
    QUALITY_METHODS,
    CLResult,
    action_weights,
    check_choice,
    confident_learning,
)
from dcloop.metrics import detection_metrics
from dcloop.results import write_issue_table

log = logging.getLogger(__name__)


class ConfidentLearning(L.Callback):
    """Runs confident learning on the OOF buffer and updates per-sample weights.

    From epoch ``warmup_epochs`` on (1-based), every ``every_n_epochs``, after the
    :class:`OOFCollector` has written the epoch's OOF softmax: flags, label-quality
    scores and the noise matrix are computed on ``(given labels, OOF probs)``, the
    module's :class:`~dcloop.state.SampleTable` is updated, and the action sets each
    sample's loss weight for the next epoch. Flags are recomputed from scratch each
    time, so a sample that later looks clean comes back.

    Needs a LightningModule with a ``samples`` :class:`~dcloop.state.SampleTable`
    (such as :class:`~dcloop.models.FoldEnsemble`) and an ``OOFCollector`` placed
    before this callback in ``Trainer(callbacks=[...])``.

    Args:
        warmup_epochs: first epoch (1-based) at which confident learning runs.
        every_n_epochs: run every n-th epoch after the warm-up.
        filter_by: cleanlab's ``filter_by`` method.
        quality_method: label-quality score.
        action: ``"prune"``, ``"downweight"`` or ``"detect"``.
        frac_noise: fraction of the estimated number of issues to flag.
        downweight_floor, downweight_power: see :func:`dcloop.cleaning.action_weights`.
        backend: ``"torch"`` (dcloop's engine on the device) or ``"cleanlab"``.
        output_dir: where ``label_issues.csv`` is rewritten (atomically) each time.
        sources: ``(N,)`` file paths or dataset ids for the issue table.
    """

    def __init__(
        self,
        *,
        warmup_epochs: int = 5,
        every_n_epochs: int = 1,
        filter_by: str = "prune_by_noise_rate",
        quality_method: str = "self_confidence",
        action: str = "prune",
        frac_noise: float = 1.0,
        downweight_floor: float = 0.1,
        downweight_power: float = 1.0,
        backend: str = "torch",
        output_dir: str | Path | None = None,
        sources=None,
    ) -> None:
        check_choice("filter_by", filter_by, FILTER_BY)
        check_choice("quality_method", quality_method, QUALITY_METHODS)
        check_choice("action", action, ACTIONS)
        check_choice("backend", backend, BACKENDS)
        if warmup_epochs < 1:
            raise ValueError(f"warmup_epochs must be >= 1; got {warmup_epochs}")
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1; got {every_n_epochs}")
        if not 0.0 < frac_noise <= 1.0:
            raise ValueError(f"frac_noise must be in (0, 1]; got {frac_noise}")
        self.warmup_epochs = warmup_epochs
        self.every_n_epochs = every_n_epochs
        self.filter_by = filter_by
        self.quality_method = quality_method
        self.action = action
        self.frac_noise = frac_noise
        self.downweight_floor = downweight_floor
        self.downweight_power = downweight_power
        self.backend = backend
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.sources = sources
        self.history: list[dict[str, Any]] = []
        self.last_result: CLResult | None = None
        self._oof: OOFCollector | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(filter_by=self.filter_by, action=self.action)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not hasattr(pl_module, "samples"):
            raise ValueError(
                "ConfidentLearning needs a LightningModule with a `samples` "
                "SampleTable, e.g. dcloop.models.FoldEnsemble"
            )
        mine = trainer.callbacks.index(self)
        found = [c for c in trainer.callbacks[:mine] if isinstance(c, OOFCollector)]
        if not found:
            raise ValueError(
                "ConfidentLearning needs an OOFCollector placed before it in "
                "Trainer(callbacks=[OOFCollector(), ConfidentLearning(), ...])"
            )
        self._oof = found[-1]

    def due(self, epoch: int) -> bool:
        """Whether confident learning runs at the end of (0-based) ``epoch``."""
        done = epoch + 1
        return done >= self.warmup_epochs and (done - self.warmup_epochs) % self.every_n_epochs == 0

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if not self.due(epoch) or self._oof.last_epoch != epoch:
            return
        table = pl_module.samples
        if trainer.world_size > 1:  # decide once, on rank 0; broadcast tensors, not pickles
            from dcloop.scale.distributed import broadcast_result

            mine = None
            if trainer.is_global_zero:
                mine = self.run(table.labels, self._oof.probs, confirmed=table.confirmed)
            result = broadcast_result(mine, len(table), self._oof.num_classes, table.labels.device)
        else:
            result = self.run(table.labels, self._oof.probs, confirmed=table.confirmed)
        table.record_flags(result.flags, result.quality, result.suggested, epoch)
        table.weights.copy_(
            action_weights(
                result.flags,
                result.quality,
                action=self.action,
                floor=self.downweight_floor,
                power=self.downweight_power,
            )
            * table.prior_weights  # label-file weights (dcloop.people), 1 by default
        )
        self.last_result = result
        row = self._summarise(epoch, result, table)
        self.history.append(row)
        pl_module.log_dict(
            {f"cl/{k}": float(v) for k, v in row.items() if k != "epoch"},
            on_epoch=True,
            on_step=False,
            sync_dist=trainer.world_size > 1,  # the same on every rank (broadcast verdict)
        )
        if trainer.is_global_zero:
            log.info(
                "epoch %d: %d flagged, estimated noise %.3f",
                epoch,
                row["num_flagged"],
                row["noise_rate_est"],
            )
        if self.output_dir is not None and trainer.is_global_zero:
            write_issue_table(self.output_dir / "label_issues.csv", table, self.sources)
        trainer.strategy.barrier("dcloop_cl")

    def run(self, labels, probs, confirmed=None) -> CLResult:
        """Confident learning on ``(labels, probs)`` with this callback's settings; rows in
        ``confirmed`` (people checked them) are never flagged."""
        return confident_learning(
            labels,
            probs,
            filter_by=self.filter_by,
            quality_method=self.quality_method,
            frac_noise=self.frac_noise,
            backend=self.backend,
            confirmed=confirmed,
        )

    @staticmethod
    def _summarise(epoch: int, result: CLResult, table) -> dict[str, Any]:
        row: dict[str, Any] = {
            "epoch": epoch,
            "num_flagged": int(result.flags.sum()),
            "noise_rate_est": result.noise_rate,
            "weight_mean": float(table.weights.mean()),
            "quality_mean": float(result.quality.mean()),
        }
        if table.has_ground_truth:
            det = detection_metrics(result.flags, table.is_noisy, result.quality)
            row.update({k: det[k] for k in ("precision", "recall", "f1", "auroc")})
        return row

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
