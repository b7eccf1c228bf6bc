"""DDP: confident learning runs once, on rank 0, and its verdict reaches every rank."""

from __future__ import annotations

import torch
import torch.distributed as dist

from dcloop.cl import CLResult

_TENSORS = ("flags", "quality", "suggested", "joint", "noise_matrix", "class_noise_rate")


def broadcast_result(
    result: CLResult | None,
    num_samples: int,
    num_classes: int,
    device: torch.device,
    src: int = 0,
) -> CLResult:
    """Broadcast rank ``src``'s verdict to every rank, tensor by tensor, on ``device``.

    Only rank ``src`` needs ``result``; the others pass ``None``. Tensors travel with
    ``torch.distributed.broadcast`` (NCCL or gloo), not pickled: a pickled CUDA tensor
    would land on rank ``src``'s GPU.

    Args:
        result: the verdict on rank ``src``; ignored elsewhere.
        num_samples, num_classes: N and C (the same on every rank).
        device: this rank's device (``cuda:<local rank>`` with NCCL).
        src: the deciding rank.
    """
    n, c = num_samples, num_classes
    shapes = {
        "flags": ((n,), torch.uint8),
        "quality": ((n,), torch.float32),
        "suggested": ((n,), torch.int64),
        "joint": ((c, c), torch.float32),
        "noise_matrix": ((c, c), torch.float32),
        "class_noise_rate": ((c,), torch.float32),
    }
    mine = dist.get_rank() == src
    out = {}
    for name in _TENSORS:
        shape, dtype = shapes[name]
        if mine:
            t = getattr(result, name).to(device=device, dtype=dtype).contiguous()
        else:
            t = torch.empty(shape, dtype=dtype, device=device)
        dist.broadcast(t, src=src)
        out[name] = t
    rate = torch.tensor([result.noise_rate if mine else 0.0], dtype=torch.float64, device=device)
    dist.broadcast(rate, src=src)
    out["flags"] = out["flags"].bool()
    return CLResult(noise_rate=float(rate.item()), **out)
