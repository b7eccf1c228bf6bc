"""Safe in-loop cleaning: when to start, what evidence to judge on, how far to act, and harm.

Plain functions on tensors and lists, used by the
:class:`~dcloop.callbacks.ConfidentLearning` callback and tested without a Trainer.

Why they exist: early in training the out-of-fold (OOF) predictions are weak, and
confident learning then counts the model's own mistakes as label errors. Pruning those
removes the hard samples of whole classes, the next epoch's predictions get worse, and the
loop feeds on itself (measured on CIFAR-10 and spoken digits: see ``scripts/bench_real.md``).
So cleaning:

* starts when the OOF predictions stopped improving (:func:`readiness`), not at a fixed
  epoch; ``warmup_epochs`` stays a floor;
* judges on each sample's held-out softmax averaged over epochs (:func:`ema`);
* never flags more than a fraction of any class, nor of the whole set (:func:`bound_flags`);
* acts gradually: a flag lowers the weight step by step, and only a sample flagged at
  ``ramp_steps`` consecutive steps reaches the action's full weight (:func:`ramp_weights`);
* watches for harm (:func:`harm_checks`) and backs off when it sees it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import torch

from dcloop._checks import check_bool, check_choice, check_float, check_int
from dcloop.calibrate import CALIBRATE_METHODS, calibrate, noise_fields
from dcloop.cl import BACKENDS, FILTER_BY, SCORE_METHODS, verdict

#: Readiness rules: ``plateau`` (OOF accuracy stopped improving, or ``ready_max_frac`` of
#: the schedule passed) or ``fixed`` (``warmup_epochs`` alone, the old behaviour).
READY_RULES = ("plateau", "fixed")


@dataclass(frozen=True)
class SafetyPolicy:
    """Settings of safe cleaning, validated once.

    Attributes:
        ready: ``"plateau"`` or ``"fixed"`` (see :func:`readiness`).
        ready_patience: epochs over which the OOF accuracy must have stopped improving.
        ready_min_delta: improvement (absolute accuracy) below which it "stopped".
        ready_max_frac: start at the latest after this fraction of ``max_epochs``.
        smoothing: EMA decay of the OOF softmax across epochs, in [0, 1); 0 uses the last
            epoch's alone.
        max_class_frac: at most this fraction of a class's given labels is flagged.
        max_flag_frac: at most this fraction of all samples is flagged.
        min_confidence: a flag is acted on (its weight lowered) only if the evidence gives
            the suggested label at least this probability (:func:`confident`).
        ramp_steps: consecutive flagged steps until a sample gets the action's full weight.
        guard: check for harm after every step and back off when found.
        guard_val_drop: validation accuracy this far (absolute) below its best before
            cleaning started counts as harm.
        guard_noise_jump: estimated noise rate rising by more than this between two steps
            counts as harm.
        guard_pause: epochs cleaning pauses after a back-off.
        guard_max_backoffs: after this many back-offs cleaning stops for the rest of the run.
        guard_patience: harm seen on this many consecutive steps backs off; the steps before
            hold the weights as they are (lower none further), so a dead class, a validation
            dip or a noise jump on one epoch of a volatile run is not yet harm. A replica with
            constant outputs backs off at once. 1 (the default) backs off at the first sign:
            2 measured no better for the kept model (docs/safe_cleaning.md).
    """

    ready: str = "plateau"
    ready_patience: int = 2
    ready_min_delta: float = 0.01
    ready_max_frac: float = 0.5
    smoothing: float = 0.5
    max_class_frac: float = 0.5
    max_flag_frac: float = 0.5
    min_confidence: float = 0.5
    ramp_steps: int = 2
    guard: bool = True
    guard_val_drop: float = 0.03
    guard_noise_jump: float = 0.1
    guard_pause: int = 3
    guard_max_backoffs: int = 2
    guard_patience: int = 1

    def __post_init__(self) -> None:
        check_choice("ready", self.ready, READY_RULES)
        check_int("ready_patience", self.ready_patience, minimum=1)
        check_int("ramp_steps", self.ramp_steps, minimum=1)
        check_int("guard_pause", self.guard_pause, minimum=0)
        check_int("guard_max_backoffs", self.guard_max_backoffs, minimum=1)
        check_int("guard_patience", self.guard_patience, minimum=1)
        check_float("ready_min_delta", self.ready_min_delta, low=0.0, high=1.0)
        check_float("ready_max_frac", self.ready_max_frac, low=0.0, high=1.0)
        check_float("max_class_frac", self.max_class_frac, low=0.0, high=1.0, low_open=True)
        check_float("max_flag_frac", self.max_flag_frac, low=0.0, high=1.0, low_open=True)
        check_float("min_confidence", self.min_confidence, low=0.0, high=1.0)
        check_float("guard_val_drop", self.guard_val_drop, low=0.0, high=1.0)
        check_float("guard_noise_jump", self.guard_noise_jump, low=0.0, high=1.0)
        check_float("smoothing", self.smoothing, low=0, high=1, high_open=True)
        check_bool("guard", self.guard)

    def as_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------ readiness


def oof_accuracy(labels: torch.Tensor, probs: torch.Tensor) -> float:
    """Agreement of the OOF argmax with the given labels (one host sync)."""
    return float((probs.argmax(1) == labels.to(probs.device)).float().mean())


def readiness(
    acc_history: Sequence[float],
    *,
    epoch: int,
    warmup_epochs: int,
    max_epochs: int | None,
    policy: SafetyPolicy,
) -> tuple[bool, str]:
    """Whether the OOF predictions can be trusted at (1-based) ``epoch``, and why.

    ``plateau``: from ``warmup_epochs`` on, ready when this epoch's OOF accuracy (against
    the given labels) is less than ``ready_min_delta`` above its value ``ready_patience``
    epochs earlier, or when ``ready_max_frac`` of ``max_epochs`` has
    passed. While the predictions still improve quickly, their mistakes are the model's,
    not the labels'. ``fixed``: ready from ``warmup_epochs`` on.

    Args:
        acc_history: OOF accuracy of every epoch so far, epoch 1 first (``epoch`` entries).
        epoch: the epoch just finished, 1-based.
        warmup_epochs: the floor.
        max_epochs: the schedule's length (``None``: no fraction rule).
        policy: the settings.

    Returns:
        ``(ready, reason)``; the reason names the numbers.
    """
    if epoch < warmup_epochs:
        return False, f"epoch {epoch} < warmup_epochs {warmup_epochs}"
    if policy.ready == "fixed":
        return True, f"epoch {epoch} >= warmup_epochs {warmup_epochs}"
    if max_epochs and max_epochs > 0 and epoch >= math.ceil(policy.ready_max_frac * max_epochs):
        return True, f"epoch {epoch} >= {policy.ready_max_frac:g} of max_epochs {max_epochs}"
    p = policy.ready_patience
    if len(acc_history) <= p:
        return False, f"{len(acc_history)} epoch(s) of OOF accuracy, {p + 1} needed to compare"
    gain = acc_history[-1] - acc_history[-1 - p]
    if gain < policy.ready_min_delta:
        return True, (
            f"OOF accuracy {acc_history[-1]:.3f} gained {gain:+.3f} in {p} epochs "
            f"(< {policy.ready_min_delta:g})"
        )
    return False, f"OOF accuracy {acc_history[-1]:.3f} still rising ({gain:+.3f} in {p} epochs)"


# ------------------------------------------------------------------------------ evidence


def ema(previous: torch.Tensor | None, current: torch.Tensor, decay: float) -> torch.Tensor:
    """Exponential moving average of OOF softmax across epochs, ``(N, C)``, rows sum to 1.

    ``decay=0`` (or no ``previous``) returns ``current``.
    """
    if previous is None or decay == 0.0:
        return current.float().clone()
    # ``previous`` may come from a checkpoint on the host: follow the current device.
    previous = previous.to(device=current.device, dtype=torch.float32)
    return previous.mul(decay).add_(current.float(), alpha=1.0 - decay)


# -------------------------------------------------------------------------------- action


def bound_flags(
    flags: torch.Tensor,
    quality: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    max_class_frac: float,
    max_flag_frac: float,
) -> torch.Tensor:
    """``flags`` with at most ``max_class_frac`` of each given class and ``max_flag_frac``
    of all samples left flagged; the lowest-quality flags are the ones kept.

    Why half of a class by default: confident learning assumes each class's given labels are
    mostly right (the noise matrix is diagonally dominant). A verdict that more than half of
    a class is mislabelled contradicts its own assumption: those flags are the model's
    mistakes, and pruning them empties the class.

    Args:
        flags: ``(N,)`` bool.
        quality: ``(N,)`` label quality (lower = worse), used to rank.
        labels: ``(N,)`` given labels.
        num_classes: C.

    Returns:
        ``(N,)`` bool on ``flags.device``; a subset of ``flags``. No host sync.
    """
    device = flags.device
    labels = labels.to(device)
    n = flags.numel()
    # Rank flagged rows by quality (worst first); unflagged rows go last.
    key = torch.where(
        flags, quality.to(device).float(), torch.full_like(quality, 2.0, device=device)
    )
    order = torch.argsort(key, stable=True)
    sorted_labels = labels[order]
    sorted_flags = flags[order]
    # Rank of each row within its class, in quality order (flagged rows come first): a stable
    # sort by label keeps the quality order inside each class; O(N) memory, not (N, C).
    counts = torch.bincount(labels, minlength=num_classes)
    by_class = torch.argsort(sorted_labels, stable=True)
    starts = counts.cumsum(0) - counts
    rank_in_class = torch.empty_like(by_class)
    rank_in_class[by_class] = torch.arange(n, device=device) - starts[sorted_labels[by_class]]
    class_rank = rank_in_class + 1  # 1-based
    class_cap = torch.floor(counts.float() * max_class_frac).long()
    keep = sorted_flags & (class_rank <= class_cap[sorted_labels])
    total_rank = keep.long().cumsum(0)
    keep &= total_rank <= int(math.floor(max_flag_frac * n))
    out = torch.zeros_like(flags)
    out[order] = keep
    return out


def confident(flags: torch.Tensor, evidence: torch.Tensor, min_confidence: float) -> torch.Tensor:
    """The flags whose evidence gives the suggested label at least ``min_confidence``.

    A weak model gives its best guess little probability: its disagreements with the given
    label are its own uncertainty, not evidence that the label is wrong. These flags stay in
    the issue table (ranked by quality) but are not acted on. ``(N,)`` bool, no host sync.
    """
    if min_confidence <= 0:
        return flags
    return flags & (evidence.max(1).values.to(flags.device) >= min_confidence)


def update_streak(streak: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
    """Consecutive flagged steps per sample: +1 where flagged, 0 where cleared."""
    return torch.where(flags, streak + 1, torch.zeros_like(streak))


def ramp_weights(
    flags: torch.Tensor,
    streak: torch.Tensor,
    target: torch.Tensor,
    *,
    ramp_steps: int,
) -> torch.Tensor:
    """Weights that move from 1 to the action's ``target`` over ``ramp_steps`` flagged steps.

    A sample flagged at ``s`` consecutive steps gets ``1 - min(s, R)/R * (1 - target)``: with
    ``R=2`` and prune, 0.5 at its first flag and 0 from its second on. Unflagged samples get 1
    (a sample a later verdict clears comes back at once).

    Args:
        flags: ``(N,)`` bool, this step's (bounded) flags.
        streak: ``(N,)`` int, consecutive flagged steps including this one.
        target: ``(N,)`` float, the action's weight for a flagged sample (0 for prune).
        ramp_steps: R.
    """
    frac = streak.clamp(max=ramp_steps).float() / ramp_steps
    ramped = 1.0 - frac * (1.0 - target.float())
    return torch.where(flags, ramped, torch.ones_like(ramped))


# --------------------------------------------------------------------------------- guard


def never_predicted(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[int]:
    """Classes that have given labels but are the argmax of no OOF prediction."""
    pred = torch.bincount(probs.argmax(1), minlength=num_classes)
    given = torch.bincount(labels.to(probs.device), minlength=num_classes)
    return [int(c) for c in torch.nonzero((pred == 0) & (given > 0)).flatten().tolist()]


def constant_replicas(probs: torch.Tensor, folds: torch.Tensor, num_folds: int) -> list[int]:
    """Replicas whose held-out outputs no longer depend on the input.

    Replica k is "constant" when, over the samples of fold k, every class's softmax varies by
    less than 1e-3 (standard deviation) or its argmax is one class for every sample.
    """
    out = []
    folds = folds.to(probs.device)
    for k in range(num_folds):
        p = probs[folds == k]
        if p.shape[0] < 2:
            continue
        flat = bool(p.float().std(0).max() < 1e-3)
        single = bool(torch.unique(p.argmax(1)).numel() == 1)
        if flat or single:
            out.append(k)
    return out


def val_drop_tolerance(best: float, val_size: int | None, floor: float) -> float:
    """How far validation accuracy may fall below ``best`` before the guard calls it harm:
    ``floor`` (``guard_val_drop``), or three standard errors of an accuracy near ``best`` on
    ``val_size`` samples where that is more: ``best`` is the maximum of several noisy
    epochs, so a small validation set falls below it by chance (500 images at 28 %: 0.060;
    10,000 at 90 %: 0.009, the floor holds).

    Example:
        >>> round(val_drop_tolerance(0.28, 500, 0.03), 3)
        0.06
    """
    if not val_size or val_size <= 0:
        return floor
    p = min(max(float(best), 0.0), 1.0)
    return max(floor, 3.0 * math.sqrt(p * (1.0 - p) / int(val_size)))


def harm_checks(
    *,
    probs: torch.Tensor,
    labels: torch.Tensor,
    folds: torch.Tensor,
    num_classes: int,
    num_folds: int,
    noise_rate: float,
    previous_noise_rate: float | None,
    val_acc: float | None,
    best_val_before: float | None,
    policy: SafetyPolicy,
    val_size: int | None = None,
) -> list[str]:
    """Signs that cleaning hurts, each as one sentence (empty list: none).

    Args:
        probs: ``(N, C)`` this epoch's OOF softmax (not smoothed: the model as it is now).
        labels, folds: ``(N,)`` given labels and folds.
        noise_rate: this step's estimated noise rate.
        previous_noise_rate: the previous step's, ``None`` at the first step.
        val_acc: this epoch's validation accuracy, ``None`` without a validation set.
        best_val_before: the best validation accuracy before cleaning first acted.
        val_size: validation samples (``None``: unknown): the drop allowed is
            :func:`val_drop_tolerance`.
    """
    problems = []
    missing = never_predicted(probs, labels, num_classes)
    if missing:
        problems.append(f"class(es) {missing} predicted for no training sample")
    flat = constant_replicas(probs, folds, num_folds)
    if flat:
        problems.append(f"replica(s) {flat} give the same output for every input")
    if (
        previous_noise_rate is not None
        and noise_rate - previous_noise_rate > policy.guard_noise_jump
    ):
        problems.append(
            f"estimated noise rate jumped from {previous_noise_rate:.3f} to {noise_rate:.3f} "
            f"(> +{policy.guard_noise_jump:g})"
        )
    if val_acc is not None and best_val_before is not None:
        tol = val_drop_tolerance(best_val_before, val_size, policy.guard_val_drop)
        if val_acc < best_val_before - tol:
            problems.append(
                f"validation accuracy {val_acc:.3f} fell below its best before cleaning, "
                f"{best_val_before:.3f} (by more than {tol:.3g})"
            )
    return problems


#: What a verdict does to the flagged samples' loss weights.
ACTIONS = ("prune", "downweight", "detect")


def action_weights(
    flags: torch.Tensor,
    quality: torch.Tensor,
    *,
    action: str,
    floor: float = 0.0,
    power: float = 1.0,
) -> torch.Tensor:
    """Per-sample loss weights for one verdict.

    Args:
        flags: ``(N,)`` bool flags.
        quality: ``(N,)`` label-quality scores in [0, 1].
        action: ``"prune"`` (flagged -> 0), ``"downweight"`` (flagged ->
            ``max(floor, quality ** power)``) or ``"detect"`` (all 1).
        floor: smallest weight a down-weighted sample keeps.
        power: sharpens (> 1) or softens (< 1) the quality-to-weight map.

    Returns:
        ``(N,)`` float32 weights. Unflagged samples always get 1, so a sample that a
        later verdict clears comes back.
    """
    check_choice("action", action, ACTIONS)
    check_float("floor", floor, low=0, high=1)
    check_float("power", power, low=0, low_open=True)
    ones = torch.ones_like(quality, dtype=torch.float32)
    if action == "detect":
        return ones
    if action == "prune":
        return torch.where(flags, torch.zeros_like(ones), ones)
    down = quality.float().clamp(0, 1).pow(power).clamp_min(floor)
    return torch.where(flags, down, ones)


@dataclass(frozen=True)
class CleaningPolicy:
    """What one confident-learning step computes and does, validated once.

    Attributes:
        filter_by: cleanlab's ``filter_by`` method.
        quality_method: label-quality score.
        frac_noise: fraction of the estimated number of issues to flag, in ``(0, 1]``.
        backend: ``"torch"`` (dcloop's engine) or ``"cleanlab"``.
        action: ``"prune"``, ``"downweight"`` or ``"detect"`` (:func:`action_weights`).
        downweight_floor, downweight_power: the down-weighting map.
        calibrate: ``"noise_aware"``: the verdict's noise estimate (``noise_rate``,
            ``noise_matrix``, ``joint``, ``class_noise_rate``) comes from
            :func:`dcloop.calibrate.calibrate` (temperature per fold fitted with the noise;
            confident learning's own estimate counts the model's mistakes as noise, +2 to
            +55 % high in ``scripts/results/bench_calibration.md``); the flags are
            confident learning's. ``"posterior"``: the same estimate, and the flags are the
            rows whose calibrated posterior of the given label
            (:attr:`dcloop.calibrate.Calibration.posterior_clean`) is below 0.5, with that
            posterior as the quality score (the flagged count then follows the calibrated
            estimate instead of confident learning's, which runs high where the replicas are
            weak). ``"none"``: confident learning's estimate and flags.
        relabel: the weight the action takes from a sample's given label goes to its
            suggested label instead (the held-out evidence's argmax): a pruned sample trains
            on the suggested label at full weight, one half-way down the ramp on both labels
            half and half (:meth:`dcloop.models.FoldEnsemble.train_targets`). ``False``: the
            weight is taken away (prune / downweight as such).
        calibrate_warm: each step's calibration fit starts from the last step's
            (:func:`dcloop.calibrate.calibrate`'s ``start``): about a quarter of the
            confident-learning time, but the kept model 0.5 points lower on average in
            ``scripts/results/bench_kept_warm.md`` (11 of 18 runs lower, 2 higher); off.
    """

    filter_by: str = "prune_by_noise_rate"
    quality_method: str = "self_confidence"
    frac_noise: float = 1.0
    backend: str = "torch"
    action: str = "prune"
    downweight_floor: float = 0.1
    downweight_power: float = 1.0
    calibrate: str = "none"
    relabel: bool = False
    calibrate_warm: bool = False

    def __post_init__(self) -> None:
        check_bool("relabel", self.relabel)
        check_bool("calibrate_warm", self.calibrate_warm)
        check_choice("filter_by", self.filter_by, FILTER_BY)
        check_choice("quality_method", self.quality_method, SCORE_METHODS)
        check_choice("action", self.action, ACTIONS)
        check_choice("backend", self.backend, BACKENDS)
        check_float("frac_noise", self.frac_noise, low=0, high=1, low_open=True)
        check_float("downweight_floor", self.downweight_floor, low=0, high=1)
        check_float("downweight_power", self.downweight_power, low=0, low_open=True)
        check_choice("calibrate", self.calibrate, CALIBRATE_METHODS)

    def verdict(self, labels, probs, confirmed=None, folds=None, warm=None):
        """:func:`dcloop.cl.verdict` with this policy's method settings; with ``calibrate``
        set, its noise estimate from :func:`dcloop.calibrate.calibrate` (``folds``: ``(N,)``
        fold of each row, one temperature per fold replica; ``None``: one for all rows).
        ``warm``: a dict carried between calls (the loop's steps): with ``calibrate_warm``,
        its ``"calibration"`` is the fit's start and is replaced by this call's fit."""
        result = verdict(
            labels,
            probs,
            filter_by=self.filter_by,
            quality_method=self.quality_method,
            frac_noise=self.frac_noise,
            backend=self.backend,
            confirmed=confirmed,
        )
        if self.calibrate == "none":
            return result
        keep = warm is not None and self.calibrate_warm
        cal = calibrate(probs, labels, folds, start=warm.get("calibration") if keep else None)
        if keep:
            warm["calibration"] = cal.warm_start()
        result = replace(result, **noise_fields(cal, result.flags.device))
        if self.calibrate == "noise_aware":
            return result
        quality = cal.posterior_clean.to(result.flags.device).float()
        flags = quality < 0.5
        if confirmed is not None:
            flags &= ~torch.as_tensor(confirmed, device=flags.device).bool()
        return replace(result, flags=flags, quality=quality)

    def weights(self, flags: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
        """The action's target weights for these flags (:func:`action_weights`)."""
        return action_weights(
            flags,
            quality,
            action=self.action,
            floor=self.downweight_floor,
            power=self.downweight_power,
        )
