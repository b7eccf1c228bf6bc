"""Small ``(K, K)`` numpy algebra of cleanlab 2.x, reproduced operation by operation.

These functions only touch ``(K,)`` and ``(K, K)`` arrays, so they run on the host in float64
exactly as cleanlab does (same expressions, same numpy calls, hence bit-identical results,
including the tie order of ``np.argsort`` in :func:`round_preserving_sum`).
Sources: ``cleanlab/count.py``, ``cleanlab/filter.py``, ``cleanlab/internal/util.py`` and
``cleanlab/internal/latent_algebra.py`` (cleanlab 2.9).
"""

from __future__ import annotations

import numpy as np

FLOATING_POINT_COMPARISON = 1e-6
CLIPPING_LOWER_BOUND = 1e-6
CONFIDENT_THRESHOLDS_LOWER_BOUND = 2 * FLOATING_POINT_COMPARISON
TINY_VALUE = 1e-100
MISSING_CLASS_THRESHOLD = 2  # cleanlab's BIG_VALUE: no probability reaches it


def round_preserving_sum(iterable: np.ndarray) -> np.ndarray:
    """Round floats to ints keeping their (rounded) total (cleanlab ``round_preserving_sum``)."""
    floats = np.asarray(iterable, dtype=float)
    ints = floats.round()
    orig_sum = np.sum(floats).round()
    int_sum = np.sum(ints).round()
    while abs(int_sum - orig_sum) > FLOATING_POINT_COMPARISON:
        diff = np.round(orig_sum - int_sum)
        increment = -1 if int(diff < 0.0) else 1
        changes = min(int(abs(diff)), len(iterable))
        indices = np.argsort(floats - ints)[::-increment][:changes]
        for i in indices:
            ints[i] = ints[i] + increment
        int_sum = np.sum(ints).round()
    return ints.astype(int)


def round_preserving_row_totals(matrix: np.ndarray) -> np.ndarray:
    """Round each row of a ``(K, K)`` float matrix to ints preserving the row totals."""
    rounded = np.apply_along_axis(func1d=round_preserving_sum, axis=1, arr=matrix)
    return rounded.astype(int, copy=False)


def calibrate_confident_joint(confident_joint: np.ndarray, label_counts: np.ndarray) -> np.ndarray:
    """Rescale rows to the label counts and the total to ``N`` (``calibrate_confident_joint``).

    Args:
        confident_joint: ``(K, K)`` int counts, rows = given label.
        label_counts: ``(K,)`` int number of examples per given label.

    Returns:
        ``(K, K)`` int calibrated confident joint.
    """
    # cleanlab's expressions, with the second operation of each done in place: the same
    # elementwise results in the same memory layout (hence the same np.sum order), one (K, K)
    # float64 temporary instead of four.
    calibrated_cj = confident_joint.T / np.clip(
        confident_joint.sum(axis=1), a_min=TINY_VALUE, a_max=None
    )
    calibrated_cj *= label_counts
    calibrated_cj = calibrated_cj.T
    calibrated_cj /= np.clip(np.sum(calibrated_cj), a_min=TINY_VALUE, a_max=None)
    calibrated_cj *= sum(label_counts)
    return round_preserving_row_totals(calibrated_cj)


def _reduce_prune_counts(prune_count_matrix: np.ndarray, frac_noise: float = 1.0) -> np.ndarray:
    new_mat = prune_count_matrix * frac_noise
    np.fill_diagonal(new_mat, prune_count_matrix.diagonal())
    np.fill_diagonal(
        new_mat,
        prune_count_matrix.diagonal() + np.sum(prune_count_matrix - new_mat, axis=0),
    )
    return new_mat.astype(int)


def keep_at_least_n_per_class(
    prune_count_matrix: np.ndarray, n: int, *, frac_noise: float = 1.0
) -> np.ndarray:
    """cleanlab ``filter._keep_at_least_n_per_class`` on the transposed confident joint."""
    prune_count_matrix_diagonal = np.diagonal(prune_count_matrix)
    new_diagonal = np.maximum(prune_count_matrix_diagonal, n)
    diff_per_col = new_diagonal - prune_count_matrix_diagonal
    num_noise_rates_per_col = np.maximum(
        np.count_nonzero(prune_count_matrix, axis=0) - 1.0,
        1.0,
    )
    new_mat = prune_count_matrix - diff_per_col / num_noise_rates_per_col
    new_mat[new_mat < 0] = 0
    np.fill_diagonal(new_mat, new_diagonal)
    new_mat = _reduce_prune_counts(new_mat, frac_noise)
    return round_preserving_row_totals(new_mat).astype(int)


def prune_count_matrix(
    confident_joint: np.ndarray,
    label_counts: np.ndarray,
    *,
    min_examples_per_class: int,
    frac_noise: float,
    num_to_remove_per_class: np.ndarray | None,
) -> np.ndarray:
    """The ``(K, K)`` number of examples to prune, indexed ``[true, given]`` (cleanlab layout).

    Reproduces the ``prune_count_matrix`` set-up of cleanlab's ``filter.find_label_issues``.
    """
    pcm = keep_at_least_n_per_class(
        prune_count_matrix=confident_joint.T, n=min_examples_per_class, frac_noise=frac_noise
    )
    if num_to_remove_per_class is not None:
        psy = pcm / np.sum(pcm, axis=1)
        noise_per_s = psy.sum(axis=1) - psy.diagonal()
        tmp = (psy.T * num_to_remove_per_class / noise_per_s).T
        np.fill_diagonal(tmp, label_counts - num_to_remove_per_class)
        pcm = round_preserving_row_totals(tmp)
    return pcm


def confident_thresholds(self_conf_by_class: list[np.ndarray | None]) -> np.ndarray:
    """Per-class thresholds exactly as ``cleanlab.count.get_confident_thresholds``.

    Args:
        self_conf_by_class: for each class ``k``, the ``(n_k,)`` array ``pred_probs[labels == k,
            k]`` in row order and input dtype, or ``None`` when class ``k`` has no example.

    Returns:
        ``(K,)`` thresholds; float32 for float32 input with every class present, else float64
        (the dtype numpy gives cleanlab's list of ``np.mean`` values and ``BIG_VALUE`` ints).
    """
    values = [
        np.mean(sc) if sc is not None else MISSING_CLASS_THRESHOLD for sc in self_conf_by_class
    ]
    return np.clip(values, a_min=CONFIDENT_THRESHOLDS_LOWER_BOUND, a_max=None)


# ----------------------------------------------------------------------------- latent algebra


def clip_noise_rates(noise_matrix: np.ndarray) -> np.ndarray:
    diagonal = np.diagonal(noise_matrix)
    noise_matrix = np.clip(noise_matrix, 0, 0.9999)
    np.fill_diagonal(noise_matrix, diagonal)
    return noise_matrix / np.clip(noise_matrix.sum(axis=0), a_min=TINY_VALUE, a_max=None)


def clip_values(x: np.ndarray, low: float, high: float, new_sum: float) -> np.ndarray:
    prev_sum = new_sum
    x = np.clip(x, low, high)
    return x * prev_sum / np.clip(np.sum(x), a_min=TINY_VALUE, a_max=None)


def _compute_py_cnt(ps, noise_matrix, inverse_noise_matrix) -> np.ndarray:
    py = (
        inverse_noise_matrix.diagonal()
        / np.clip(noise_matrix.diagonal(), a_min=TINY_VALUE, a_max=None)
        * ps
    )
    return clip_values(py, low=CLIPPING_LOWER_BOUND, high=1.0, new_sum=1.0)


def _compute_inv_noise_matrix(py, noise_matrix, ps) -> np.ndarray:
    joint = noise_matrix * py
    inverse_noise_matrix = joint.T / np.clip(ps, a_min=TINY_VALUE, a_max=None)
    return clip_noise_rates(inverse_noise_matrix)


def _compute_noise_matrix_from_inverse(ps, inverse_noise_matrix, py) -> np.ndarray:
    joint = (inverse_noise_matrix * ps).T
    noise_matrix = joint / np.clip(py, a_min=TINY_VALUE, a_max=None)
    return clip_noise_rates(noise_matrix)


def estimate_latent(
    confident_joint: np.ndarray, label_counts: np.ndarray, num_examples: int, converge: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """cleanlab ``estimate_latent(..., py_method="cnt", converge_latent_estimates=converge)``.

    Returns:
        ``(py, noise_matrix, inverse_noise_matrix)`` with ``noise_matrix[i, j] = P(given=i |
        true=j)`` and ``inverse_noise_matrix[i, j] = P(true=i | given=j)``.
    """
    ps = label_counts / float(num_examples)
    labels_class_counts = confident_joint.sum(axis=1).astype(float)
    true_labels_class_counts = confident_joint.sum(axis=0).astype(float)
    noise_matrix = confident_joint / np.clip(true_labels_class_counts, a_min=TINY_VALUE, a_max=None)
    inv_noise_matrix = confident_joint.T / np.clip(
        labels_class_counts, a_min=TINY_VALUE, a_max=None
    )
    py = _compute_py_cnt(ps, noise_matrix, inv_noise_matrix)
    noise_matrix = clip_noise_rates(noise_matrix)
    inv_noise_matrix = clip_noise_rates(inv_noise_matrix)
    if not converge:
        return py, noise_matrix, inv_noise_matrix
    for _ in range(3):  # cleanlab _converge_estimates: 3 noise-matrix x 5 inverse iterations
        for _ in range(5):
            inv_noise_matrix = _compute_inv_noise_matrix(py, noise_matrix, ps)
            py = _compute_py_cnt(ps, noise_matrix, inv_noise_matrix)
        noise_matrix = _compute_noise_matrix_from_inverse(ps, inv_noise_matrix, py)
    py = clip_values(py, low=1e-5, high=1.0, new_sum=1.0)
    noise_matrix = clip_noise_rates(noise_matrix)
    inv_noise_matrix = clip_noise_rates(inv_noise_matrix)
    return py, noise_matrix, inv_noise_matrix
