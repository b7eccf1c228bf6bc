"""DDP helpers: a sharded training order that matches one process, one verdict for all ranks.

Under DDP with ``P`` processes and per-process batch ``B / P``, dcloop trains exactly as
one process with batch ``B`` (up to float summation order) when:

* rank ``r`` takes positions ``r, r + P, ...`` of the one-process epoch order, so the
  union of the ranks' batch ``i`` is the one-process batch ``i``
  (:func:`train_sampler`; Lightning's own sampler wrapper reshuffles instead);
* each replica's weighted loss is normalised by the *global* batch weight
  (``FoldEnsemble`` does it under DDP);
* confident learning runs once, on rank 0, and its verdict is broadcast
  (:func:`broadcast_result`).
"""

from __future__ import annotations

from dcloop.callbacks.distributed import broadcast_result  # noqa: F401 (re-export)
from dcloop.data.sampling import DistributedEpochSampler, train_sampler  # noqa: F401 (re-export)
