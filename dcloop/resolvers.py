"""OmegaConf resolvers the shipped configs use (registered on import; no heavy imports).

* ``${dcloop_scale:SIZE,FACTOR}``: ``max(1, round(SIZE * FACTOR))`` for an int ``SIZE``, each
  entry so for a list (``hidden: [256, 128]``), ``null`` for ``null``. The model configs'
  ``replica_net`` reads ``${dcloop_scale:${..net.width},0.5}``: fold replicas half as wide as
  the kept network, whatever width the user gives ``model.net``.
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf


def scale_size(size: Any, factor: Any) -> Any:
    """``size`` (an int, a list of ints or ``None``) times ``factor``, rounded, at least 1."""
    try:
        f = float(factor)
    except (TypeError, ValueError):
        raise ValueError(f"dcloop_scale: the factor must be a number; got {factor!r}") from None
    if not f > 0:
        raise ValueError(f"dcloop_scale: the factor must be > 0; got {factor!r}")
    if size is None:
        return None
    if isinstance(size, (list, tuple)) or OmegaConf.is_list(size):
        return [scale_size(s, f) for s in size]
    if isinstance(size, bool) or not isinstance(size, int):
        raise ValueError(f"dcloop_scale: the size must be an int or a list of ints; got {size!r}")
    return max(1, round(size * f))


def register() -> None:
    """Register the resolvers (again: a no-op that keeps the same functions)."""
    OmegaConf.register_new_resolver("dcloop_scale", scale_size, replace=True)


register()
