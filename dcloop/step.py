"""The cleaning step as one pure function: ``(state, evidence, policy) -> (new state, report)``.

Both ways of running dcloop call :func:`clean_step`: the fold-parallel
:class:`~dcloop.callbacks.ConfidentLearning` callback between epochs, and the sequential
merge (:mod:`dcloop.scale.merge`) once per round. One step:

1. confident learning on ``(given labels, evidence)`` (rows a person confirmed are never
   flagged), or a verdict the caller computed already (under DDP: rank 0's, broadcast);
2. the flags bounded per class and in total (:func:`dcloop.safety.bound_flags`);
3. the guard (:func:`dcloop.safety.harm_checks`): on harm the weights go back to the label
   file's (or 1), the ramp restarts, and cleaning pauses (or stops after repeated harm);
4. otherwise the confidence gate (:func:`dcloop.safety.confident`), the ramp
   (:func:`dcloop.safety.ramp_weights`) and the action's weights, times the label file's.

A step that falls in a pause (or after cleaning stopped) still gives a verdict, but changes
no weight: the parallel callback does not call the step then; the merge, which must write an
issue table every round, does.

Nothing here touches a Trainer, a file or a callback: the inputs are tensors and numbers,
the outputs new ones (the input state is not modified), so the step is tested on its own
(``tests/test_step.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from dcloop.cl import CLResult
from dcloop.metrics import detection_metrics
from dcloop.safety import (
    CleaningPolicy,
    SafetyPolicy,
    bound_flags,
    confident,
    harm_checks,
    ramp_weights,
    update_streak,
)

#: Keys of the ``cl`` config group that are the schedule's (the rest are the two policies').
SCHEDULE_KEYS = ("warmup_epochs", "every_n_epochs")


@dataclass(frozen=True)
class StepPolicy:
    """Everything the ``cl`` config group sets, validated once: what a step computes and
    does (:class:`~dcloop.safety.CleaningPolicy`), how safely
    (:class:`~dcloop.safety.SafetyPolicy`), and when the loop runs one.

    Attributes:
        cleaning: method, score, action and its weights.
        safety: readiness, evidence smoothing, bounds, gate, ramp, guard.
        warmup_epochs: earliest epoch (1-based) at which a step may run (parallel mode).
        every_n_epochs: once ready, a step every n-th epoch (parallel mode).
    """

    cleaning: CleaningPolicy = field(default_factory=CleaningPolicy)
    safety: SafetyPolicy = field(default_factory=SafetyPolicy)
    warmup_epochs: int = 3
    every_n_epochs: int = 1

    def __post_init__(self) -> None:
        for name in SCHEDULE_KEYS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be >= 1; got {value}")

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None = None, **more: Any) -> StepPolicy:
        """From the flat ``cl`` options (``conf/cl/default.yaml``'s keys) plus ``more``.

        Raises:
            ValueError: an unknown key (named, with the known ones) or a bad value.
        """
        if options is not None and not isinstance(options, Mapping):
            raise ValueError(f"cl options must be a mapping; got {options!r}")
        opts = {str(k): v for k, v in {**dict(options or {}), **more}.items()}
        cleaning_keys = set(CleaningPolicy.__dataclass_fields__)
        safety_keys = set(SafetyPolicy.__dataclass_fields__)
        unknown = sorted(set(opts) - cleaning_keys - safety_keys - set(SCHEDULE_KEYS))
        if unknown:
            raise ValueError(
                f"unknown confident-learning option(s) {unknown}; safety options are "
                f"{sorted(safety_keys)}, the others {sorted(cleaning_keys | set(SCHEDULE_KEYS))}"
            )
        return cls(
            cleaning=CleaningPolicy(**{k: v for k, v in opts.items() if k in cleaning_keys}),
            safety=SafetyPolicy(**{k: v for k, v in opts.items() if k in safety_keys}),
            **{k: opts[k] for k in SCHEDULE_KEYS if k in opts},
        )

    def as_options(self) -> dict[str, Any]:
        """The flat options :meth:`from_options` takes back (for ``meta.json``, ``metrics``)."""
        out = dataclasses.asdict(self.cleaning) | dataclasses.asdict(self.safety)
        return out | {k: getattr(self, k) for k in SCHEDULE_KEYS}

    def stopped(self, backoffs: int) -> bool:
        """Cleaning stops for the rest of the run after ``guard_max_backoffs`` back-offs."""
        return backoffs >= self.safety.guard_max_backoffs


@dataclass(frozen=True)
class StepState:
    """What one step reads and the next one gets, all ``(N,)`` tensors keyed by ``index``
    (one device), plus the run-level counters.

    Attributes:
        labels: given labels, int64.
        folds: fold of each sample, int64 (the guard's constant-replica check).
        flag_streak: consecutive steps that acted on the sample (the ramp), int64.
        weights: training weights, the label file's included (1: keep, 0: pruned).
        confirmed: bool, rows a person checked: never flagged.
        prior_weights: the label file's weights (1 without one): a factor of every weight.
        start_epoch: the first step whose weights took effect (``None``: none yet).
        noise_rate: the previous step's estimated noise rate (``None``: no step yet).
        backoffs: back-offs so far (the guard).
        paused_until: cleaning is paused up to this epoch (round), inclusive (-1: never).
        harm_streak: consecutive steps, up to this one, whose guard found harm that has not
            yet backed off (``guard_patience``).
    """

    labels: torch.Tensor
    folds: torch.Tensor
    flag_streak: torch.Tensor
    weights: torch.Tensor
    confirmed: torch.Tensor
    prior_weights: torch.Tensor
    start_epoch: int | None = None
    noise_rate: float | None = None
    backoffs: int = 0
    paused_until: int = -1
    harm_streak: int = 0

    @classmethod
    def initial(cls, labels, folds, *, confirmed=None, prior_weights=None) -> StepState:
        """Before any step: no streak, the label file's weights (or 1) to train with."""
        labels = torch.as_tensor(labels, dtype=torch.long)
        n = labels.numel()
        prior = torch.ones(n) if prior_weights is None else torch.as_tensor(prior_weights)
        return cls(
            labels=labels,
            folds=torch.as_tensor(folds, dtype=torch.long, device=labels.device),
            flag_streak=torch.zeros(n, dtype=torch.long, device=labels.device),
            weights=prior.float().to(labels.device).clone(),
            confirmed=torch.zeros(n, dtype=torch.bool, device=labels.device)
            if confirmed is None
            else torch.as_tensor(confirmed, dtype=torch.bool, device=labels.device),
            prior_weights=prior.float().to(labels.device),
        )

    @classmethod
    def of_table(cls, table, **counters: Any) -> StepState:
        """The state a :class:`~dcloop.state.SampleTable` holds (copies), plus ``counters``."""
        return cls(
            labels=table.labels,
            folds=table.folds,
            flag_streak=table.flag_streak.clone(),
            weights=table.weights.clone(),
            confirmed=table.confirmed,
            prior_weights=table.prior_weights,
            **counters,
        )


@dataclass(frozen=True)
class Evidence:
    """What a step judges on.

    Attributes:
        probs: ``(N, C)`` the held-out softmax to judge on (in parallel mode the EMA over
            epochs; in sequential mode the round's merged shards).
        epoch: the epoch (parallel, 1-based) or round (sequential) the step belongs to.
        current: ``(N, C)`` the model as it is now (this epoch's OOF softmax), for the guard;
            default ``probs``.
        val_acc: validation accuracy now (``None``: no validation set).
        best_val_before: the best validation accuracy before cleaning first acted.
        val_size: samples in the validation set (``None``: unknown); the guard then allows
            three standard errors of ``best_val_before`` as the drop, where that is more than
            ``guard_val_drop`` (:func:`dcloop.safety.val_drop_tolerance`).
    """

    probs: torch.Tensor
    epoch: int
    current: torch.Tensor | None = None
    val_acc: float | None = None
    best_val_before: float | None = None
    val_size: int | None = None


@dataclass
class StepReport:
    """What one step found and did.

    Attributes:
        epoch: as :attr:`Evidence.epoch`.
        result: the verdict, its flags within the class and total bounds.
        num_flagged_unbounded: flags before the bounds.
        acted: ``(N,)`` bool, the flags whose weight the step lowered (confident ones).
        problems: the guard's findings, one sentence each (empty: none, or no guard).
        event: the guard's event (``{"epoch", "problems", "action"}``), ``None`` without harm.
        skipped: why no weight changed although the step ran (paused, stopped), else ``None``.
    """

    epoch: int
    result: CLResult
    num_flagged_unbounded: int
    acted: torch.Tensor
    problems: list[str] = field(default_factory=list)
    event: dict[str, Any] | None = None
    skipped: str | None = None

    def row(self, state: StepState, true_labels: torch.Tensor | None = None) -> dict[str, Any]:
        """One row of the run's step history (``metrics.json``'s ``history``; logged as
        ``cl/*``), for the state the step returned; detection scores with ``true_labels``."""
        result = self.result
        row: dict[str, Any] = {
            "epoch": self.epoch,
            "num_flagged": int(result.flags.sum()),
            "noise_rate_est": result.noise_rate,
            "weight_mean": float(state.weights.mean()),
            "quality_mean": float(result.quality.mean()),
        }
        if true_labels is not None and bool((true_labels >= 0).all()):
            noisy = state.labels.to(true_labels.device) != true_labels
            det = detection_metrics(result.flags, noisy, result.quality)
            row.update({k: det[k] for k in ("precision", "recall", "f1", "auroc")})
        row.update(
            num_flagged_unbounded=self.num_flagged_unbounded,
            num_acted=int(self.acted.sum()),
            harm=len(self.problems),
        )
        return row


def clean_step(
    state: StepState,
    evidence: Evidence,
    policy: StepPolicy,
    *,
    verdict: CLResult | None = None,
) -> tuple[StepState, StepReport]:
    """One cleaning step: verdict, bounds, guard, gate, ramp, weights.

    Args:
        state: the per-sample state and counters before the step (not modified).
        evidence: the softmax to judge on, the model now, validation accuracy.
        policy: the run's settings.
        verdict: a verdict on ``evidence.probs`` computed by the caller (e.g. on rank 0 and
            broadcast); default: :meth:`CleaningPolicy.verdict` here. Its flags are bounded
            here (a copy: the given verdict is not modified).

    Returns:
        ``(new_state, report)``. ``new_state.weights`` are the weights to train with next
        (the label file's included); ``report.result`` the verdict to record.

    Example:
        >>> state = StepState.initial(labels, folds)  # doctest: +SKIP
        >>> state, report = clean_step(state, Evidence(probs, epoch=1), StepPolicy())
    """
    cleaning, safety = policy.cleaning, policy.safety
    labels, epoch = state.labels, evidence.epoch
    if verdict is None:
        verdict = cleaning.verdict(
            labels, evidence.probs, confirmed=state.confirmed, folds=state.folds
        )
    raw = int(verdict.flags.sum())
    bounded = bound_flags(
        verdict.flags,
        verdict.quality,
        labels,
        verdict.joint.shape[0],
        max_class_frac=safety.max_class_frac,
        max_flag_frac=safety.max_flag_frac,
    )
    result = dataclasses.replace(verdict, flags=bounded)
    none = torch.zeros_like(bounded)
    counters = {"noise_rate": result.noise_rate}
    if policy.stopped(state.backoffs) or epoch <= state.paused_until:
        why = (
            "stopped (repeated harm)"
            if policy.stopped(state.backoffs)
            else f"paused until {state.paused_until} (harm)"
        )
        new = dataclasses.replace(state, **counters)
        return new, StepReport(epoch, result, raw, none, skipped=why)
    problems = _harm(state, evidence, policy, result) if safety.guard else []
    if (
        problems
        and not _touched(state)
        and cleaning.action != "detect"
        and all(p.startswith(DEAD_CLASS) for p in problems)
    ):
        # Nothing lowered yet: the model, not cleaning, is at fault (a class no replica
        # predicts yet on a weak early model). Not ready: no action, no back-off counted.
        # (A replica with constant outputs is broken, not early: that still backs off.)
        new = dataclasses.replace(state, **counters)
        event = {
            "epoch": epoch,
            "problems": problems,
            "action": "nothing acted yet; not acting on this step (no back-off counted)",
        }
        why = "not ready: " + "; ".join(problems)
        return new, StepReport(epoch, result, raw, none, problems, event, skipped=why)
    if problems:
        streak = state.harm_streak + 1
        urgent = any(p.startswith(CONSTANT_REPLICA) for p in problems)
        if streak < safety.guard_patience and not urgent and cleaning.action != "detect":
            # Seen once: hold the weights (lower none further) and look again next step.
            new = dataclasses.replace(state, harm_streak=streak, **counters)
            event = {
                "epoch": epoch,
                "problems": problems,
                "action": f"holding the weights (harm seen {streak} step(s) in a row; backing "
                f"off at {safety.guard_patience})",
            }
            why = "holding: " + "; ".join(problems)
            return new, StepReport(epoch, result, raw, none, problems, event, skipped=why)
        new, event = _back_off(state, epoch, problems, policy)
        new = dataclasses.replace(new, harm_streak=0, **counters)
        return new, StepReport(epoch, result, raw, none, problems, event)
    acted = confident(result.flags, evidence.probs, safety.min_confidence)
    streak = update_streak(state.flag_streak, acted)
    target = cleaning.weights(acted, result.quality)
    ramped = ramp_weights(acted, streak, target, ramp_steps=safety.ramp_steps)
    weights = ramped.to(state.prior_weights.device) * state.prior_weights
    start = state.start_epoch
    if start is None and cleaning.action != "detect":
        start = epoch
    new = dataclasses.replace(
        state, flag_streak=streak, weights=weights, start_epoch=start, harm_streak=0, **counters
    )
    return new, StepReport(epoch, result, raw, acted)


#: How :func:`dcloop.safety.harm_checks` opens the finding "a class no replica predicts".
DEAD_CLASS = "class(es) "
#: ... and the finding "a replica gives the same output for every input" (backs off at once).
CONSTANT_REPLICA = "replica(s) "


def _touched(state: StepState) -> bool:
    """Has cleaning lowered any weight below the label file's (is there anything to undo)?"""
    return state.start_epoch is not None and bool(
        (state.weights.float() < state.prior_weights.float().to(state.weights.device)).any()
    )


def _harm(state: StepState, evidence: Evidence, policy: StepPolicy, result: CLResult):
    started = _touched(state)
    # A calibrated estimate (cl.calibrate != none) rises as the replicas learn and as pruning
    # stops them memorising the wrong labels (CIFAR-10N worst: 0.14 -> 0.33 against a true
    # 0.42): a rise is not harm there. Confident learning's own estimate is the one that runs
    # away, so the jump check guards it only.
    jump = started and policy.cleaning.calibrate == "none"
    current = evidence.current if evidence.current is not None else evidence.probs
    return harm_checks(
        probs=current,
        labels=state.labels,
        folds=state.folds,
        num_classes=current.shape[1],
        num_folds=int(state.folds.max()) + 1,
        noise_rate=result.noise_rate,
        previous_noise_rate=state.noise_rate if jump else None,
        val_acc=evidence.val_acc if started else None,
        best_val_before=evidence.best_val_before,
        policy=policy.safety,
        val_size=evidence.val_size,
    )


def _back_off(state: StepState, epoch: int, problems: list[str], policy: StepPolicy):
    """Weights back to the label file's, the ramp from scratch; pause or stop."""
    backoffs, paused_until = state.backoffs, state.paused_until
    if policy.cleaning.action == "detect":  # nothing to undo: report only
        what = "reported only (action=detect changes no weights)"
    else:
        backoffs += 1
        paused_until = epoch + policy.safety.guard_pause
        restored = "weights restored" if state.start_epoch is not None else "nothing acted yet"
        if policy.stopped(backoffs):
            what = f"{restored}; cleaning stopped for the rest of the run"
        else:
            what = f"{restored}; cleaning paused until epoch {paused_until}"
    new = dataclasses.replace(
        state,
        flag_streak=torch.zeros_like(state.flag_streak),
        weights=state.prior_weights.clone().float(),
        backoffs=backoffs,
        paused_until=paused_until,
    )
    return new, {"epoch": epoch, "problems": problems, "action": what}
