"""The kept model as a product: saved in the run folder, loaded without dcloop's training
classes, used for prediction (``dcloop-predict``, :func:`load_model`).

* :func:`save_kept_model` writes ``RUN/model/`` (``train()`` calls it at its end);
* :func:`load_model` reads it back into a :class:`KeptModel` (``predict``,
  ``predict_proba``) with torch alone: no lightning, no fold ensemble, no callbacks;
* :func:`replica_nets` turns a fold ensemble's K stacked replicas into K networks.

Only what is asked for is imported: ``load_model`` never imports the saving side.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "load_model": "dcloop.kept.model",
    "KeptModel": "dcloop.kept.model",
    "save_kept_model": "dcloop.kept.save",
    "replica_nets": "dcloop.kept.save",
}

__all__ = ["KeptModel", "load_model", "replica_nets", "save_kept_model"]


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
