"""Confident learning between epochs: flag, score, and prune or down-weight, safely."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import OmegaConf

from dcloop.calibrate import WarmStart
from dcloop.callbacks.distributed import broadcast_result
from dcloop.callbacks.oof import OOFCollector
from dcloop.cl import CLResult
from dcloop.data.labelfile import attach_label_file
from dcloop.errors import UserInputError
from dcloop.models.losses import check_soft_loss
from dcloop.results import write_issue_table
from dcloop.safety import bound_flags, ema, oof_accuracy, readiness
from dcloop.step import Evidence, StepPolicy, StepState, clean_step
from dcloop.timing import timed_hook

log = logging.getLogger(__name__)


class ConfidentLearning(L.Callback):
    """Runs confident learning on the OOF buffer and updates per-sample weights, safely.

    After every epoch whose OOF softmax the :class:`OOFCollector` wrote, the callback
    updates the evidence (each sample's held-out softmax, averaged over epochs with decay
    ``smoothing``) and asks whether the predictions can be trusted yet
    (:func:`dcloop.safety.readiness`; ``warmup_epochs`` is the floor). Once they can, every
    ``every_n_epochs``: flags, label-quality scores and the noise matrix are computed on
    ``(given labels, evidence)``; the flags are bounded per class and in total
    (:func:`dcloop.safety.bound_flags`); the action's weight is reached step by step
    (:func:`dcloop.safety.ramp_weights`). A guard checks for harm (a class no sample is
    predicted as, a replica with constant outputs, a jump of the estimated noise rate,
    validation accuracy falling after cleaning started); on harm the weights are restored,
    cleaning pauses, and a warning goes to the console, ``metrics.json`` and report.html.
    Flags are recomputed from scratch each step, so a sample that later looks clean comes
    back. Epochs are 1-based everywhere (logs, history, issue table), as ``warmup_epochs``.

    Needs a LightningModule with a ``samples`` :class:`~dcloop.state.SampleTable`
    (such as :class:`~dcloop.models.FoldEnsemble`). The out-of-fold softmax comes from its
    own :class:`OOFCollector` (``oof=``), or from one in ``Trainer(callbacks=[...])`` if
    there is one, in any position: the callback asks it for the epoch's pass when it needs
    it, so the order of the callbacks does not matter. With its own collector it runs the
    pass only on epochs whose result is read: every epoch while smoothing (the EMA) or
    plateau readiness need it, otherwise only on the epochs a step is due.

    Listeners (e.g. :class:`~dcloop.callbacks.WeakClasses`) register with
    :meth:`add_listener` and get ``on_verdict(trainer, pl_module, cl)`` after every step.

    Args:
        output_dir: where ``label_issues.csv`` is rewritten (atomically) each time.
        sources: ``(N,)`` file paths or dataset ids for the issue table (default: the
            datamodule's ``source_of(i)`` when it has one).
        oof: the collector to own (default: ``OOFCollector()``), unless the trainer lists one.
        **options: the ``cl`` config group's keys, read by
            :meth:`dcloop.step.StepPolicy.from_options`: ``warmup_epochs`` (earliest epoch,
            1-based, at which confident learning may run), ``every_n_epochs``, the fields of
            :class:`dcloop.safety.CleaningPolicy` (``filter_by``, ``quality_method``,
            ``action``: ``"prune"``, ``"downweight"`` or ``"detect"``, ``frac_noise``,
            ``downweight_floor``, ``downweight_power``, ``backend``) and of
            :class:`dcloop.safety.SafetyPolicy` (``ready``, ``smoothing``,
            ``max_class_frac``, ``min_confidence``, ``ramp_steps``, ``guard``, ...).
    """

    def __init__(
        self,
        *,
        output_dir: str | Path | None = None,
        sources=None,
        oof: OOFCollector | None = None,
        **options: Any,
    ) -> None:
        # every cl option, validated once (the defaults live in the policies, not here)
        self.step_policy = StepPolicy.from_options(options)
        self.cleaning = self.step_policy.cleaning  # method, action, floors
        self.policy = self.step_policy.safety  # readiness, smoothing, bounds, gate, guard
        self.warmup_epochs = self.step_policy.warmup_epochs
        self.every_n_epochs = self.step_policy.every_n_epochs
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.sources = sources
        self.history: list[dict[str, Any]] = []  # one row per confident-learning step
        self.epochs: list[dict[str, Any]] = []  # one row per epoch: readiness and guard
        self.guard_events: list[dict[str, Any]] = []
        self.last_result: CLResult | None = None
        self.ready_epoch: int | None = None
        self.start_epoch: int | None = None  # first step whose weights took effect
        self.best_val_before: float | None = None
        self.paused_until = 0
        self.backoffs = 0
        self.harm_streak = 0  # consecutive steps with harm not yet backed off (guard_patience)
        self.evidence: torch.Tensor | None = None  # (N, C) smoothed OOF softmax
        # cl.calibrate_warm: the last step's calibration fit, where the next one starts
        self.warm: dict[str, Any] = {}
        self.oof = oof if oof is not None else OOFCollector()
        self._oof: OOFCollector = self.oof  # the one in use (the trainer's, if it lists one)
        self.listeners: list[Any] = []

    @classmethod
    def from_config(cls, config: Any = None, **kwargs: Any) -> ConfidentLearning:
        """From the ``cl`` config group (a mapping of this class's arguments) plus ``kwargs``:
        how ``conf/callbacks/default.yaml`` lists it, so ``cl.*`` overrides keep working."""
        if OmegaConf.is_config(config):
            config = OmegaConf.to_container(config, resolve=True)
        return cls(**{**dict(config or {}), **kwargs})

    # the cleaning policy's fields, read as the callback's own (cl.action, ...)
    filter_by = property(lambda self: self.cleaning.filter_by)
    quality_method = property(lambda self: self.cleaning.quality_method)
    frac_noise = property(lambda self: self.cleaning.frac_noise)
    backend = property(lambda self: self.cleaning.backend)
    action = property(lambda self: self.cleaning.action)
    downweight_floor = property(lambda self: self.cleaning.downweight_floor)
    downweight_power = property(lambda self: self.cleaning.downweight_power)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(filter_by=self.filter_by, action=self.action)

    @property
    def stopped(self) -> bool:
        """Cleaning was stopped for the rest of the run after repeated harm."""
        return self.step_policy.stopped(self.backoffs)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not hasattr(pl_module, "samples"):
            raise ValueError(
                "ConfidentLearning needs a LightningModule with a `samples` "
                "SampleTable, e.g. dcloop.models.FoldEnsemble"
            )
        self._set_relabel(pl_module)
        dm = trainer.datamodule
        if stage == "fit":  # people's label file: confirmed rows, prior weights (dcloop.people)
            attach_label_file(pl_module.samples, getattr(dm, "label_override", None))
        listed = [c for c in trainer.callbacks if isinstance(c, OOFCollector)]
        self._oof = listed[-1] if listed else self.oof
        if not listed:  # ours: Lightning does not call its hooks, we do
            self.oof.setup(trainer, pl_module, stage)
        if self.sources is None and hasattr(dm, "train_sources"):
            self.sources = dm.train_sources  # listed once per run (dcloop's data module)
        elif self.sources is None and hasattr(dm, "source_of"):
            self.sources = [dm.source_of(i) for i in range(len(pl_module.samples))]
        if self.evidence is not None:
            self.evidence = self.evidence.to(pl_module.device)

    def _set_relabel(self, pl_module: L.LightningModule) -> None:
        """``cl.relabel``: the module trains acted-on rows on their suggested label
        (:meth:`dcloop.models.FoldEnsemble.train_targets`), so its loss takes soft targets."""
        if not self.cleaning.relabel:
            if hasattr(pl_module, "relabel"):
                pl_module.relabel = False
            return
        if not hasattr(pl_module, "train_targets"):
            raise UserInputError(
                f"cl.relabel=true needs the fold replicas' module (dcloop.models.FoldEnsemble, "
                f"mode=parallel); {type(pl_module).__name__} trains on given labels only: set "
                "cl.relabel=false"
            )
        loss_fn = getattr(pl_module, "_loss_fn", None)
        if loss_fn is not None:
            check_soft_loss(
                loss_fn, pl_module.num_classes, "cl.relabel", "cl.relabel=false", "soft targets"
            )
        pl_module.relabel = True

    def due(self, epoch: int) -> bool:
        """Whether a step may run at the end of (0-based) ``epoch`` by the schedule alone."""
        done = epoch + 1
        return done >= self.warmup_epochs and (done - self.warmup_epochs) % self.every_n_epochs == 0

    @property
    def collector(self) -> OOFCollector:
        """The OOF collector in use: the trainer's if it lists one, else this callback's own."""
        return self._oof

    @property
    def owns_oof(self) -> bool:
        """The collector in use is this callback's own (the trainer lists none)."""
        return self._oof is self.oof

    def wants_oof(self, trainer: L.Trainer) -> bool:
        """Whether this epoch's OOF pass is read: by the EMA (``smoothing > 0``), by plateau
        readiness (OOF accuracy every epoch), by a step that is due, or at the last epoch."""
        epoch0 = trainer.current_epoch
        last = trainer.max_epochs is not None and epoch0 + 1 >= trainer.max_epochs
        every_epoch = self.policy.smoothing > 0 or self.policy.ready == "plateau"
        return every_epoch or last or self.due(epoch0)

    def add_listener(self, listener: Any) -> None:
        """``listener.on_verdict(trainer, pl_module, cl)`` is called after every step."""
        if all(x is not listener for x in self.listeners):
            self.listeners.append(listener)

    @staticmethod
    def listen(trainer: L.Trainer, listener: Any, does: str) -> ConfidentLearning:
        """Register ``listener`` with the trainer's (last) :class:`ConfidentLearning` and
        return it; a trainer without one is a ``ValueError`` naming ``listener``'s class and
        what it ``does`` with the steps."""
        cls = [c for c in trainer.callbacks if isinstance(c, ConfidentLearning)]
        name = type(listener).__name__
        if not cls:
            raise ValueError(
                f"{name} {does} and needs a ConfidentLearning callback: "
                f"Trainer(callbacks=[ConfidentLearning(), {name}(), ...])"
            )
        cls[-1].add_listener(listener)
        return cls[-1]

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.owns_oof:
            if self.wants_oof(trainer) and self.oof.due(trainer):
                self.oof.ensure_collected(trainer, pl_module)
        elif self._oof.due(trainer):  # the trainer's collector: its pass, whatever the order
            self._oof.ensure_collected(trainer, pl_module)
        if self._oof.last_epoch != trainer.current_epoch:
            return
        stepped = self._after_oof(trainer, pl_module)
        if stepped:
            for listener in self.listeners:
                listener.on_verdict(trainer, pl_module, self)

    @timed_hook("confident_learning")  # seconds into metrics.json timing (dcloop.timing)
    def _after_oof(self, trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
        epoch0 = trainer.current_epoch
        epoch, table = epoch0 + 1, pl_module.samples
        probs = self._oof.probs.float()
        self.evidence = ema(self.evidence, probs, self.policy.smoothing)
        acc = oof_accuracy(table.labels, probs)
        val = _metric(trainer, "val/acc")
        ready, reason = readiness(
            [r["oof_acc"] for r in self.epochs] + [acc],
            epoch=epoch,
            warmup_epochs=self.warmup_epochs,
            max_epochs=trainer.max_epochs,
            policy=self.policy,
        )
        if ready and self.ready_epoch is None:
            self.ready_epoch = epoch
        if self.start_epoch is None and val is not None:
            self.best_val_before = max(val, self.best_val_before or val)
        row = {
            "epoch": epoch,
            "oof_acc": acc,
            "val_acc": val,
            "ready": self.ready_epoch is not None,
        }
        row["state"] = self._state(epoch, epoch0, reason)
        self.epochs.append(row)
        pl_module.log_dict(
            {"cl/oof_acc": acc, "cl/ready": float(row["ready"])},
            on_epoch=True,
            on_step=False,
            sync_dist=trainer.world_size > 1,
        )
        if trainer.is_global_zero:
            log.info("epoch %d: OOF accuracy %.3f vs given labels; %s", epoch, acc, row["state"])
        if row["state"].startswith("step"):
            self._step(trainer, pl_module, epoch, probs)
            return True
        return False

    def _state(self, epoch: int, epoch0: int, reason: str) -> str:
        if self.stopped:
            return "stopped (repeated harm)"
        if epoch <= self.paused_until:
            return f"paused until epoch {self.paused_until} (harm)"
        if self.ready_epoch is None:
            return f"not ready: {reason}"
        if not self.due(epoch0):
            return "ready, not due (every_n_epochs)"
        return f"step (ready since epoch {self.ready_epoch}: {reason})"

    def _step(self, trainer, pl_module, epoch: int, probs: torch.Tensor) -> None:
        table = pl_module.samples
        if trainer.world_size > 1:  # decide once, on rank 0; broadcast tensors, not pickles
            mine = None
            if trainer.is_global_zero:
                mine = self.run(
                    table.labels, self.evidence, confirmed=table.confirmed, folds=table.folds
                )
            result = broadcast_result(mine, len(table), self._oof.num_classes, table.labels.device)
        else:
            result = self.run(
                table.labels, self.evidence, confirmed=table.confirmed, folds=table.folds
            )
        state = StepState.of_table(
            table,
            start_epoch=self.start_epoch,
            noise_rate=self.history[-1]["noise_rate_est"] if self.history else None,
            backoffs=self.backoffs,
            paused_until=self.paused_until,
            harm_streak=self.harm_streak,
        )
        evidence = Evidence(
            self.evidence,
            epoch,
            current=probs,
            val_acc=self.epochs[-1]["val_acc"],
            best_val_before=self.best_val_before,
            val_size=_val_size(trainer),
        )
        new, report = clean_step(state, evidence, self.step_policy, verdict=result)
        result = report.result
        table.record_flags(result.flags, result.quality, result.suggested, epoch)
        table.weights.copy_(new.weights)
        table.flag_streak.copy_(new.flag_streak)
        self.start_epoch = new.start_epoch
        self.backoffs, self.paused_until = new.backoffs, new.paused_until
        self.harm_streak = new.harm_streak
        if report.event is not None:
            self.guard_events.append(report.event)
            if trainer.is_global_zero:
                log.warning(
                    "dcloop guard, epoch %d: %s; %s",
                    epoch,
                    "; ".join(report.problems),
                    report.event["action"],
                )
        self.last_result = result
        true = table.true_labels if table.has_ground_truth else None
        row = report.row(new, true)
        self.history.append(row)
        pl_module.log_dict(
            {f"cl/{k}": float(v) for k, v in row.items() if k != "epoch"},
            on_epoch=True,
            on_step=False,
            sync_dist=trainer.world_size > 1,  # the same on every rank (broadcast verdict)
        )
        if trainer.is_global_zero:
            log.info(
                "epoch %d: %d flagged (%d before the class/total bounds), %d acted on "
                "(confident), estimated noise %.3f",
                epoch,
                row["num_flagged"],
                row["num_flagged_unbounded"],
                row["num_acted"],
                row["noise_rate_est"],
            )
        if self.output_dir is not None and trainer.is_global_zero:
            write_issue_table(self.output_dir / "label_issues.csv", table, self.sources)
        trainer.strategy.barrier("dcloop_cl")

    def run(self, labels, probs, confirmed=None, folds=None) -> CLResult:
        """Confident learning on ``(labels, probs)`` with this callback's settings; rows in
        ``confirmed`` (people checked them) are never flagged; ``folds`` (each row's
        replica) for ``calibrate`` (:meth:`dcloop.safety.CleaningPolicy.verdict`)."""
        return self.cleaning.verdict(
            labels, probs, confirmed=confirmed, folds=folds, warm=self.warm
        )

    def bound(self, result: CLResult, labels: torch.Tensor) -> torch.Tensor:
        """``result.flags`` within the policy's class and total bounds."""
        return bound_flags(
            result.flags,
            result.quality,
            labels,
            result.joint.shape[0],
            max_class_frac=self.policy.max_class_frac,
            max_flag_frac=self.policy.max_flag_frac,
        )

    def judge(self, table, probs: torch.Tensor) -> CLResult:
        """A verdict outside the loop (e.g. no step ran): on the smoothed evidence when there
        is some, else on ``probs``; flags bounded as in the loop."""
        evidence = self.evidence if self.evidence is not None else probs
        result = self.run(table.labels, evidence, confirmed=table.confirmed, folds=table.folds)
        result.flags = self.bound(result, table.labels)
        return result

    def summary(self) -> dict[str, Any]:
        """Readiness, per-epoch states and guard events, for ``metrics.json``."""
        return {
            "policy": self.policy.as_dict(),
            "warmup_epochs": self.warmup_epochs,
            "ready_epoch": self.ready_epoch,
            "start_epoch": self.start_epoch,
            "best_val_acc_before_cleaning": self.best_val_before,
            "backoffs": self.backoffs,
            "stopped": self.stopped,
            "guard_events": list(self.guard_events),
            "epochs": list(self.epochs),
        }

    _STATE = (
        "history",
        "epochs",
        "guard_events",
        "ready_epoch",
        "start_epoch",
        "best_val_before",
        "paused_until",
        "backoffs",
        "harm_streak",
    )

    def state_dict(self) -> dict[str, Any]:
        state = {k: getattr(self, k) for k in self._STATE}
        if self.owns_oof:  # Lightning saves a listed collector itself
            state["oof"] = self.oof.state_dict()
        if self.evidence is not None:
            state["evidence"] = self.evidence.cpu()
        start = self.warm.get("calibration")
        if start is not None:  # a resumed run's next fit starts where this one would have
            state["calibration_start"] = {
                "temperatures": start.temperatures,
                "likelihood_matrix": start.likelihood_matrix,
            }
        if self.last_result is not None:  # the verdict a resumed run ends with if no step runs
            state["last_result"] = {
                k: (v.cpu() if isinstance(v, torch.Tensor) else v)
                for k, v in vars(self.last_result).items()
            }
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        self.epochs = list(state_dict.get("epochs", []))
        self.guard_events = list(state_dict.get("guard_events", []))
        self.ready_epoch = state_dict.get("ready_epoch")
        self.start_epoch = state_dict.get("start_epoch")
        self.best_val_before = state_dict.get("best_val_before")
        self.paused_until = int(state_dict.get("paused_until", 0))
        self.backoffs = int(state_dict.get("backoffs", 0))
        self.harm_streak = int(state_dict.get("harm_streak", 0))
        evidence = state_dict.get("evidence")
        self.evidence = None if evidence is None else evidence.float()
        last = state_dict.get("last_result")
        self.last_result = None if last is None else CLResult(**last)
        start = state_dict.get("calibration_start")
        self.warm = {} if start is None else {"calibration": WarmStart(**start)}
        if state_dict.get("oof") is not None:
            self.oof.load_state_dict(state_dict["oof"])


def _metric(trainer: L.Trainer, key: str) -> float | None:
    """A logged epoch metric as a float, ``None`` when not logged."""
    value = trainer.callback_metrics.get(key)
    return None if value is None else float(value)


def _val_size(trainer) -> int | None:
    """Samples in the run's validation set (the guard's tolerance), ``None`` if unknown."""
    val = getattr(getattr(trainer, "datamodule", None), "val_dataset", None)
    try:
        return len(val) if val is not None else None
    except TypeError:
        return None
