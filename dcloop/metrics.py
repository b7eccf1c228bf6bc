"""Detection metrics of flags and scores against known noise, and the blocks of a run's
``metrics.json`` both ways of running share (functional, on tensors)."""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_f1_score,
    binary_precision,
    binary_recall,
)


def detection_metrics(
    flags: torch.Tensor, is_noisy: torch.Tensor, quality: torch.Tensor | None = None
) -> dict[str, float]:
    """Precision, recall and F1 of ``flags`` against ``is_noisy``; AUROC of ``quality``
    (torchmetrics' functional binary metrics).

    Args:
        flags: ``(N,)`` bool, the samples flagged as label errors.
        is_noisy: ``(N,)`` bool, the samples whose given label is wrong.
        quality: ``(N,)`` label-quality scores in [0, 1] (lower = more likely wrong), optional.

    Returns:
        ``{"precision", "recall", "f1", "num_flagged", "num_noisy"}`` and ``"auroc"``
        when ``quality`` is given (the probability that a noisy sample scores below a
        clean one; ties count half; NaN when every sample is noisy or none is).
    """
    flags = flags.bool()
    is_noisy = is_noisy.bool().long()
    out = {
        "precision": float(binary_precision(flags, is_noisy)),
        "recall": float(binary_recall(flags, is_noisy)),
        "f1": float(binary_f1_score(flags, is_noisy)),
        "num_flagged": int(flags.sum()),
        "num_noisy": int(is_noisy.sum()),
    }
    if quality is not None:
        out["auroc"] = auroc(1.0 - quality.double().clamp(0, 1), is_noisy)
    return out


def auroc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` in [0, 1] for ``positive`` (ties half);
    NaN when one of the two classes is empty."""
    positive = positive.bool()
    n_pos = int(positive.sum())
    if n_pos == 0 or n_pos == positive.numel():
        return float("nan")
    return float(binary_auroc(scores, positive.long()))


def min_class_kept(table, num_classes: int) -> float:
    """The smallest fraction of a class's given labels still trained on (weight > 0)."""
    given = torch.bincount(table.labels, minlength=num_classes).float()
    kept = torch.bincount(table.labels[table.weights > 0], minlength=num_classes).float()
    return float((kept / given.clamp_min(1)).min())


def injected_noise(dm) -> dict[str, Any] | None:
    """``metrics.json``'s ``noise_injected`` block from a data module that knows the truth
    (``None`` when it does not)."""
    if dm is None or not getattr(dm, "has_ground_truth", False):
        return None
    return {
        "kind": dm.noise.kind,
        "rate": dm.noise.rate,
        "num_noisy": int(dm.is_noisy.sum()),
        "rate_actual": float(dm.is_noisy.mean()),
    }


def weak_run(
    oof_accuracy: float | None, num_classes: int, *, fast_dev_run: bool = False
) -> dict[str, Any] | None:
    """``metrics.json``'s ``weak_run`` block when the run is too weak to judge the labels:
    ``fast_dev_run``, or an OOF accuracy against the given labels within a quarter of the way
    from chance to perfect (its flags are then mostly the model's own mistakes). ``None``
    for a run strong enough."""
    chance = 1.0 / max(int(num_classes), 1)
    if fast_dev_run:
        reason = "fast_dev_run: a smoke test of a batch or two"
    elif oof_accuracy is not None and oof_accuracy < chance + 0.25 * (1 - chance):
        reason = (
            f"OOF accuracy {oof_accuracy:.3f} against the given labels, near chance ({chance:.3f})"
        )
    else:
        return None
    return {"reason": reason, "oof_accuracy": oof_accuracy, "chance": chance}


def weak_run_warning(weak: dict[str, Any]) -> str:
    """The warning line of a :func:`weak_run` block (summary, report, ``metrics.json``)."""
    return (
        f"run too weak to judge the labels ({weak['reason']}): most flags are the model's own "
        "mistakes, not label errors; train longer or use a stronger model"
    )


def run_metrics(
    *,
    mode: str,
    source: str | None,
    table,
    num_classes: int,
    num_folds: int,
    policy,
    noise_rate: float,
    history: list[dict[str, Any]],
    safety: dict[str, Any],
    guard_events: list[dict[str, Any]],
    noise_injected: dict[str, Any] | None = None,
    unit: str = "epoch",
) -> dict[str, Any]:
    """The ``metrics.json`` both ways of running write (fold-parallel ``RunResults`` and the
    sequential merge), before each adds its own blocks (validation, test, folds).

    Args:
        mode: ``"parallel"`` or ``"sequential"``.
        source: the data source's name.
        table: the run's :class:`~dcloop.state.SampleTable` after the last step.
        num_classes, num_folds: C and K.
        policy: the run's :class:`~dcloop.step.StepPolicy`.
        noise_rate: the last verdict's estimated noise rate.
        history: one row per cleaning step (:meth:`dcloop.step.StepReport.row`).
        safety: readiness and guard state (the policy's settings included).
        guard_events: ``{"epoch", "problems", "action"}`` per back-off, as warnings.
        noise_injected: :func:`injected_noise`'s block, when the truth is known.
        unit: what a step's ``epoch`` counts in the warnings (``"round"`` in sequential mode).
    """
    metrics: dict[str, Any] = {
        "data": {"source": source, "num_train": len(table), "num_classes": num_classes},
        "cleaning": {
            "mode": mode,
            "num_folds": num_folds,
            "action": policy.cleaning.action,
            "relabel": policy.cleaning.relabel,
            "filter_by": policy.cleaning.filter_by,
            "num_flagged": int(table.flagged.sum()),
            "min_class_kept_frac": min_class_kept(table, num_classes),
        },
        "noise": {"rate": noise_rate},
        "history": history,
        "safety": safety,
        "warnings": [
            f"{unit} {e['epoch']}: {'; '.join(e['problems'])} ({e['action']})" for e in guard_events
        ],
    }
    if table.has_ground_truth:
        metrics["detection"] = detection_metrics(table.flagged, table.is_noisy, table.quality)
    if noise_injected:
        metrics["noise_injected"] = noise_injected
    return metrics
