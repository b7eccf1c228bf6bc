"""Optimiser, schedule and loss of dcloop's LightningModules.

Both modules take either the flat settings (``lr``, ``weight_decay``,
``scheduler="cosine"|"none"``) or factories, as Hydra partials give them::

    optimizer: {_target_: torch.optim.AdamW, _partial_: true, lr: 0.003, weight_decay: 0.0001}
    scheduler: {_target_: torch.optim.lr_scheduler.CosineAnnealingLR, _partial_: true}

``optimizer(params)`` builds the optimiser; ``scheduler(optimizer)`` the schedule, with
``T_max`` (cosine) filled from ``trainer.max_epochs`` and ``total_steps`` (one-cycle) from
``trainer.estimated_stepping_batches`` when the partial leaves them out.

Independence of the fold replicas: :class:`~dcloop.models.FoldEnsemble` stacks the K
replicas' parameters into ``(K, ...)`` tensors and gives them to one optimiser. An optimiser
whose update of an element depends only on that element's own gradient history (SGD with or
without momentum, Adam, AdamW, RMSprop, ...) acts as K independent optimisers. One that uses a
norm or a factorisation of a whole tensor (LAMB, LARS, Adafactor, Shampoo, Muon, L-BFGS) mixes
the replicas, and replica k would learn from fold k's labels through the others: those raise.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn

from dcloop._checks import check_callable

# Update of each element from its own gradient history only: K stacked replicas stay K optimisers.
ELEMENTWISE = frozenset(
    {
        "SGD",
        "Adam",
        "AdamW",
        "Adamax",
        "NAdam",
        "RAdam",
        "RMSprop",
        "Rprop",
        "Adagrad",
        "Adadelta",
        "ASGD",
        "SparseAdam",
        "Lion",
        "FusedAdam",
        "FusedSGD",
    }
)
# Whole-tensor norms, factorisations or a global line search: the replicas would be coupled.
COUPLED = {
    "LBFGS": "a line search over all parameters together",
    "Adafactor": "second moments factorised over a tensor's last two dimensions",
    "Muon": "orthogonalised updates of whole matrices",
    "LAMB": "a trust ratio from each whole tensor's norm",
    "Lamb": "a trust ratio from each whole tensor's norm",
    "FusedLAMB": "a trust ratio from each whole tensor's norm",
    "LARS": "a trust ratio from each whole tensor's norm",
    "Lars": "a trust ratio from each whole tensor's norm",
    "NovoGrad": "second moments from each whole tensor's norm",
    "Shampoo": "preconditioners over whole tensors",
    "DistributedShampoo": "preconditioners over whole tensors",
    "SOAP": "preconditioners over whole tensors",
}
STEP_SCHEDULERS = frozenset({"OneCycleLR", "CyclicLR"})  # stepped per batch, not per epoch


def describe(obj: Any) -> Any:
    """A plain, comparable description of a setting: a partial as ``"module.Name(k=v, ...)"``."""
    if isinstance(obj, functools.partial):
        func = obj.func
        name = f"{getattr(func, '__module__', '')}.{getattr(func, '__qualname__', repr(func))}"
        args = [repr(a) for a in obj.args] + [f"{k}={v!r}" for k, v in sorted(obj.keywords.items())]
        return f"{name}({', '.join(args)})"
    if callable(obj):
        return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', repr(obj))}"
    return obj


def check_optimizer(optimizer: torch.optim.Optimizer) -> None:
    """Refuse an optimiser known to couple stacked replicas; warn for one not known either way.

    Raises:
        ValueError: for the optimisers in ``COUPLED``, naming why.
    """
    name = type(optimizer).__name__
    _refuse_coupled(name)
    if name not in ELEMENTWISE:
        rank_zero_warn(
            f"{name} is not known to be elementwise: if its update of a parameter uses the "
            "norm or shape of the whole tensor, the K stacked fold replicas are coupled "
            "(see dcloop.models.optim)"
        )


def check_optimizer_factory(optimizer: Callable | None) -> None:
    """At construction: refuse a partial of an optimiser class known to couple the replicas."""
    cls = getattr(optimizer, "func", optimizer)
    if isinstance(cls, type):
        _refuse_coupled(cls.__name__)


def _refuse_coupled(name: str) -> None:
    if name in COUPLED:
        raise ValueError(
            f"{name} couples the K stacked fold replicas ({COUPLED[name]}), so each replica "
            "would learn from its own held-out fold through the others. Use an elementwise "
            f"optimiser ({', '.join(sorted(ELEMENTWISE - {'FusedAdam', 'FusedSGD'}))}), or "
            "mode=sequential (one ordinary run per fold)"
        )


def check_scheduler(scheduler: Any) -> None:
    """``scheduler`` is ``"cosine"``, ``"none"``, ``None`` or a factory of the optimiser."""
    if isinstance(scheduler, str):
        if scheduler not in ("cosine", "none"):
            raise ValueError(
                "scheduler must be 'cosine', 'none' or a partial of an LR scheduler; "
                f"got {scheduler!r}"
            )
    else:
        check_callable("scheduler", scheduler, expected="'cosine', 'none', a callable")


def configure_optimizers(
    params,
    *,
    optimizer: Callable | None,
    scheduler: Any,
    lr: float,
    weight_decay: float,
    trainer=None,
    stacked: bool = False,
):
    """What ``LightningModule.configure_optimizers`` returns.

    Args:
        params: the parameters to optimise.
        optimizer: ``optimizer(params)`` builds it; ``None`` = ``AdamW(lr, weight_decay)``.
        scheduler: ``"cosine"`` (over ``trainer.max_epochs``), ``"none"``/``None``, or
            ``scheduler(optimizer)`` (a partial; ``T_max`` / ``total_steps`` filled in).
        lr, weight_decay: of the default AdamW.
        trainer: the Lightning trainer (for ``max_epochs`` and the number of steps).
        stacked: the parameters are ``(K, ...)`` fold replicas: refuse coupling optimisers.
    """
    params = list(params)
    if optimizer is None:
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **_fused(None, params))
    else:
        opt = optimizer(params, **_fused(optimizer, params))
        if not isinstance(opt, torch.optim.Optimizer):
            raise ValueError(f"optimizer(params) must build a torch Optimizer; got {opt!r}")
    if stacked:
        check_optimizer(opt)
    max_epochs = getattr(trainer, "max_epochs", None)
    t_max = max(1, int(max_epochs or 1))
    if scheduler is None or scheduler == "none":
        return opt
    if scheduler == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t_max)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
    fill: dict[str, Any] = {"T_max": t_max}
    if trainer is not None and _takes(scheduler, "total_steps"):
        fill["total_steps"] = int(trainer.estimated_stepping_batches)
    given = getattr(scheduler, "keywords", {})
    sched = scheduler(
        opt, **{k: v for k, v in fill.items() if _takes(scheduler, k) and k not in given}
    )
    name = type(sched).__name__
    config: dict[str, Any] = {
        "scheduler": sched,
        "interval": "step" if name in STEP_SCHEDULERS else "epoch",
    }
    if name == "ReduceLROnPlateau":
        config["monitor"] = "train/loss"
    return {"optimizer": opt, "lr_scheduler": config}


#: Optimisers whose ``fused=True`` kernel does the same elementwise update in one pass.
FUSABLE = ("Adam", "AdamW")


def _fused(optimizer: Callable | None, params: list) -> dict[str, Any]:
    """``{"fused": True}`` where it is safe and the user chose no implementation: Adam or
    AdamW (the default, or a partial without ``fused``/``foreach``), every parameter a
    floating tensor on the CPU or a CUDA device. On the CPU (scripts/results/bench_fused_adam.md)
    a step over AG News's K=5 stacked replicas took 1.0 ms against 5.2 ms per-tensor, and a
    whole default run 13 % less CPU (spoken digits and digits: 0-4 %)."""
    cls = torch.optim.AdamW if optimizer is None else getattr(optimizer, "func", None)
    if not isinstance(cls, type) or cls.__name__ not in FUSABLE:
        return {}
    chosen = getattr(optimizer, "keywords", {}) if optimizer is not None else {}
    if {"fused", "foreach"} & set(chosen):
        return {}
    tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    ok = all(
        isinstance(t, torch.Tensor) and t.is_floating_point() and t.device.type in ("cpu", "cuda")
        for t in tensors
    )
    return {"fused": True} if tensors and ok else {}


def per_sample_loss(loss: Callable | None, label_smoothing: float) -> Callable:
    """``(logits (n, C), targets (n,)) -> (n,)``: ``loss`` (with ``reduction="none"`` filled in
    when it takes one), or cross-entropy with ``label_smoothing``."""
    if loss is None:
        return functools.partial(
            torch.nn.functional.cross_entropy, reduction="none", label_smoothing=label_smoothing
        )
    check_callable(
        "loss", loss, allow_none=False, expected="a callable (logits, targets) -> per-sample losses"
    )
    if label_smoothing:
        raise ValueError("give label_smoothing either to the loss partial or on its own, not both")
    if _takes(loss, "reduction") and "reduction" not in getattr(loss, "keywords", {}):
        return functools.partial(loss, reduction="none")
    return loss


def _takes(func: Callable, name: str) -> bool:
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False
    return name in params


def identity(
    *,
    lr: float,
    weight_decay: float,
    scheduler: Any,
    label_smoothing: float,
    optimizer: Callable | None = None,
    loss: Callable | None = None,
) -> dict[str, Any]:
    """The optimisation settings as plain values (saved in checkpoints, compared on resume).

    The default written either way (flat keys, or AdamW / CosineAnnealingLR partials without
    other arguments) gives the same entry as older dcloop checkpoints.
    """
    info: dict[str, Any] = {
        "lr": lr,
        "weight_decay": weight_decay,
        "scheduler": scheduler,
        "label_smoothing": label_smoothing,
    }
    if optimizer is not None:
        kw = getattr(optimizer, "keywords", None)
        plain = (
            isinstance(optimizer, functools.partial)
            and optimizer.func is torch.optim.AdamW
            and not optimizer.args
            and set(kw) <= {"lr", "weight_decay"}
        )
        if plain:
            info["lr"], info["weight_decay"] = kw.get("lr", 1e-3), kw.get("weight_decay", 1e-2)
        else:
            del info["lr"], info["weight_decay"]
            info["optimizer"] = describe(optimizer)
    if callable(scheduler):
        cosine = (
            isinstance(scheduler, functools.partial)
            and scheduler.func is torch.optim.lr_scheduler.CosineAnnealingLR
            and not scheduler.args
            and not scheduler.keywords
        )
        info["scheduler"] = "cosine" if cosine else describe(scheduler)
    if loss is not None:
        info["loss"] = describe(loss)
    return info
