"""Confident learning on torch tensors: a chunked, memory-bounded engine with cleanlab semantics.

Public functions accept torch tensors on any device (or numpy arrays) and return results in the
same family: torch in -> torch on the same device, numpy in -> numpy.

* :func:`find_label_issues` -- boolean mask or ranked indices of likely label errors
  (``filter_by``: ``prune_by_noise_rate``, ``prune_by_class``, ``both``, ``confident_learning``,
  ``predicted_neq_given``, ``low_self_confidence``, ``low_normalized_margin``);
  ``backend="cleanlab"`` runs cleanlab itself.
* :func:`get_label_quality_scores` -- ``self_confidence``, ``normalized_margin``,
  ``confidence_weighted_entropy``.
* :func:`compute_confident_joint`, :func:`estimate_joint`, :func:`estimate_noise_matrices`.
* Every keyword of the cleanlab 2.9 namesakes is accepted with its semantics (a drop-in:
  ``multi_label=True`` one-vs-rest via :mod:`dcloop.cl.multilabel`, precomputed
  ``confident_joint=``, ``thresholds=``, ``return_indices_of_off_diagonals=``, ``n_jobs=`` and
  ``verbose=``); cleanlab's ``X=`` / ``clf=`` cross-validation raises one error naming the dcloop
  way to get out-of-fold probabilities.
* :func:`verdict` -- all of it at once (flags, quality, suggested label, joint, noise matrix)
  from one scan of the matrix (plus the pruning pass): what the training loop calls.

``find_label_issues`` reads ``pred_probs`` at most twice: pass 1 validates it (finite, in
``[0, 1]``, rows summing to 1) while computing the argmax, the confident guesses and counts
(the thresholds come from a gather beforehand); pass 2, for ``prune_by_noise_rate`` / ``both``,
reads in row order only the rows that can still enter a pruning line. On the host both passes
are fused numba kernels (:mod:`dcloop.cl._kernels`) for matrices of at least 2**20 entries
(``DCLOOP_CL_NUMBA=1``: always, ``0``: never; smaller ones run the torch code, which gives the
same results); on accelerators they are torch ops on row chunks
(``chunk_size`` rows). Besides the inputs, the engine holds a few ``(N,)`` vectors, ``(K, K)``
matrices and at most one ``[chunk, K]`` working block at a time. The first call in a process
imports numba and loads the compiled kernels (about a second); the first process after an
install or a change of ``_kernels.py`` compiles them (10-30 s on a 2-core host) into numba's
on-disk cache.
"""

from dcloop.cl.count import compute_confident_joint, estimate_joint, estimate_noise_matrices
from dcloop.cl.filter import BACKENDS, FILTER_BY, find_label_issues
from dcloop.cl.rank import SCORE_METHODS, get_label_quality_scores
from dcloop.cl.verdict import CLResult, verdict

__all__ = [
    "BACKENDS",
    "CLResult",
    "FILTER_BY",
    "SCORE_METHODS",
    "compute_confident_joint",
    "estimate_joint",
    "estimate_noise_matrices",
    "find_label_issues",
    "get_label_quality_scores",
    "verdict",
]
