"""OmegaConf resolvers the shipped configs use (no heavy imports): :func:`register` them
before a config is resolved (``dcloop.cli`` and ``dcloop.models.factory`` do on import).

* ``${dcloop_scale:SIZE,FACTOR}``: ``max(1, round(SIZE * FACTOR))`` for a number ``SIZE``,
  each entry so for a list (``hidden: [256, 128]``), anything else (``null``, a string) as
  given, so that ``model.net``'s own check names a bad size. The model configs'
  ``replica_net`` reads ``${dcloop_scale:${..net.width},0.5}``: fold replicas half as wide as
  the kept network, whatever width the user gives ``model.net``.
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf


def scale_size(size: Any, factor: Any) -> Any:
    """``size`` (a number or a list of them) times ``factor``, rounded, at least 1; any other
    value as given."""
    try:
        f = float(factor)
    except (TypeError, ValueError):
        raise ValueError(f"dcloop_scale: the factor must be a number; got {factor!r}") from None
    if not f > 0:
        raise ValueError(f"dcloop_scale: the factor must be > 0; got {factor!r}")
    if isinstance(size, (list, tuple)) or OmegaConf.is_list(size):
        return [scale_size(s, f) for s in size]
    if isinstance(size, bool) or not isinstance(size, (int, float)):
        return size  # null or a bad size: as given, so the network's own check names it
    return max(1, round(size * f))


def register() -> None:
    """Register the resolvers (again: replaces them with the same functions)."""
    OmegaConf.register_new_resolver("dcloop_scale", scale_size, replace=True)
