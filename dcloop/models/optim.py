"""The optimiser and schedule shared by dcloop's LightningModules."""

from __future__ import annotations

import torch


def adamw_cosine(params, *, lr: float, weight_decay: float, scheduler: str, max_epochs):
    """AdamW, annealed with a cosine over ``max_epochs`` unless ``scheduler == "none"``.

    AdamW is elementwise, so on stacked ``(K, ...)`` replica parameters it acts as K
    independent optimisers.
    """
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if scheduler == "none":
        return opt
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, int(max_epochs or 1)))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
