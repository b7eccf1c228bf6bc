"""A user's own module as the network of the fold replicas (``FoldEnsemble.from_module``).

What is reused: the module's ``forward`` (the network, ``(B, ...) -> (B, C)`` logits), its
parameters and buffers (copied, or re-initialised per replica), and the optimiser returned
by its ``configure_optimizers`` (class and per-group settings, rebuilt over the stacked
parameters). What is not: its ``training_step`` and loss (replica k must ignore fold k, so
the fold-masked loss replaces it: pass ``loss=`` for another per-sample loss), its LR
schedulers (pass ``scheduler=``), its other hooks and ``self.log`` calls, and manual
optimisation. For any of those, run the module as it is in sequential mode
(``mode=sequential``, one ordinary Trainer run per fold).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable
from typing import Literal

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

log = logging.getLogger(__name__)

Init = Literal["fresh", "copy"]


def replica_factory(module: nn.Module, init: Init = "fresh") -> Callable[[], nn.Module]:
    """``factory()`` returns a copy of ``module`` for one replica.

    Args:
        module: the template; it is copied, never trained itself.
        init: ``"fresh"`` calls ``reset_parameters()`` of every submodule that has one
            (under the caller's seed, so each replica differs); ``"copy"`` starts every
            replica from the module's current weights (e.g. pretrained ones).
    """
    if init not in ("fresh", "copy"):
        raise ValueError(f"init must be 'fresh' or 'copy'; got {init!r}")
    if getattr(module, "_trainer", None) is not None:
        raise ValueError("from_module needs a module that is not attached to a Trainer")
    if not getattr(module, "automatic_optimization", True):
        raise ValueError(
            "from_module: manual optimisation (automatic_optimization=False) is not reused; "
            "run the module in sequential mode instead"
        )
    template = copy.deepcopy(module).cpu()
    if init == "fresh":
        kept = _not_reset(template)
        if kept:
            log.info(
                "from_module: %s have no reset_parameters(): every replica starts from the "
                "module's values",
                ", ".join(kept),
            )

    def make() -> nn.Module:
        replica = copy.deepcopy(template)
        if init == "fresh":
            for m in replica.modules():
                if m is not replica and callable(getattr(m, "reset_parameters", None)):
                    m.reset_parameters()
        return replica

    return make


def _not_reset(module: nn.Module) -> list[str]:
    covered: set[str] = set()
    for prefix, m in module.named_modules():
        if m is not module and callable(getattr(m, "reset_parameters", None)):
            covered.update(f"{prefix}.{n}" if prefix else n for n, _ in m.named_parameters())
    return [n for n, _ in module.named_parameters() if n not in covered]


def optimizer_from_module(
    module: nn.Module,
) -> Callable[[Iterable[torch.Tensor]], torch.optim.Optimizer] | None:
    """A factory of the module's own optimiser over stacked parameters, or ``None``.

    Calls ``module.configure_optimizers()`` once (it must not need a Trainer) and keeps the
    optimiser's class and each parameter group's settings. The factory receives the stacked
    parameters in the module's ``named_parameters()`` order (as ``FoldEnsemble`` stacks
    them) and puts each in the group of the parameter it replicates.
    """
    configure = getattr(module, "configure_optimizers", None)
    if not callable(configure):
        return None
    try:
        made = configure()
    except Exception as err:  # noqa: BLE001 - e.g. it reads self.trainer
        raise ValueError(
            f"from_module: {type(module).__name__}.configure_optimizers() failed outside a "
            f"Trainer ({type(err).__name__}: {err}); pass optimizer= (a factory) instead"
        ) from err
    if made is None:
        return None
    opt, has_scheduler = _unpack(made, type(module).__name__)
    names = [n for n, _ in module.named_parameters()]
    by_id = {id(p): n for n, p in module.named_parameters()}
    groups = []
    for g in opt.param_groups:
        settings = {k: v for k, v in g.items() if k != "params"}
        groups.append((settings, {by_id[id(p)] for p in g["params"] if id(p) in by_id}))
    if has_scheduler:
        rank_zero_warn(
            f"from_module: the LR scheduler of {type(module).__name__}.configure_optimizers() "
            "is not reused (pass scheduler=); the replicas use the ensemble's scheduler"
        )
    cls = type(opt)

    def factory(params: Iterable[torch.Tensor]) -> torch.optim.Optimizer:
        params = list(params)
        if len(params) != len(names):
            raise ValueError(f"expected {len(names)} stacked parameters, got {len(params)}")
        named = dict(zip(names, params, strict=True))
        built = [
            {**s, "params": [named[n] for n in names if n in members]} for s, members in groups
        ]
        return cls([g for g in built if g["params"]])

    factory.__qualname__ = f"{cls.__name__} of {type(module).__name__}.configure_optimizers"
    return factory


def _unpack(made, owner: str) -> tuple[torch.optim.Optimizer, bool]:
    """The single optimiser in what ``configure_optimizers`` returned, and if a scheduler came."""
    scheduler = False
    if isinstance(made, dict):
        scheduler = made.get("lr_scheduler") is not None
        made = made.get("optimizer")
    elif isinstance(made, (list, tuple)):
        if len(made) == 2 and isinstance(made[0], (list, tuple)):
            scheduler = bool(made[1])
            made = made[0]
        if len(made) != 1:
            raise ValueError(
                f"from_module: {owner}.configure_optimizers() returns {len(made)} optimisers; "
                "one is supported (pass optimizer=)"
            )
        made = made[0]
        if isinstance(made, dict):
            return _unpack(made, owner)
    if not isinstance(made, torch.optim.Optimizer):
        raise ValueError(
            f"from_module: {owner}.configure_optimizers() returns {type(made).__name__}, not an "
            "optimiser (pass optimizer=)"
        )
    return made, scheduler
