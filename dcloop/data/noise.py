"""Label-noise injection, recorded as ground truth for later evaluation.

Conventions follow cleanlab: ``noise_matrix[i, j] = P(given_label = i | true_label = j)``, so
every column sums to 1.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dcloop._checks import (
    as_label_array,
    check_float,
    check_int,
    check_label_range,
    check_num_classes,
    is_int,
)
from dcloop.csvsafe import neutralize

logger = logging.getLogger(__name__)

#: The noise kinds :func:`inject_noise` understands.
NOISE_KINDS: tuple[str, ...] = ("none", "symmetric", "asymmetric", "random_matrix")


@dataclass
class NoiseResult:
    """The outcome of :func:`inject_noise`.

    Attributes:
        given_labels: Labels after noise, np.int64 (N,). These are what training sees.
        true_labels: Labels before noise, np.int64 (N,).
        is_noisy: ``given_labels != true_labels``, bool (N,).
        noise_matrix: The transition actually applied, float (C, C):
            ``noise_matrix[i, j]`` = fraction of samples of true class ``j`` given label ``i``.
            Columns sum to 1 (a class with no samples gets an identity column).
        kind: One of :data:`NOISE_KINDS`.
        rate: The requested noise rate.
        sparsity: The requested fraction of zero off-diagonal noise rates ("random_matrix").
        seed: The seed used.
        target_noise_matrix: For "random_matrix", the generated matrix that labels were drawn
            from (the applied one differs slightly through rounding of counts); else ``None``.
    """

    given_labels: np.ndarray
    true_labels: np.ndarray
    is_noisy: np.ndarray
    noise_matrix: np.ndarray
    kind: str
    rate: float
    sparsity: float = 0.0
    seed: int = 0
    target_noise_matrix: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        """Number of classes C."""
        return int(self.noise_matrix.shape[0])

    @property
    def num_noisy(self) -> int:
        """How many labels were changed."""
        return int(self.is_noisy.sum())

    @property
    def actual_rate(self) -> float:
        """Fraction of labels that were changed."""
        n = self.is_noisy.shape[0]
        return float(self.is_noisy.sum()) / n if n else 0.0


def empirical_noise_matrix(given_labels: Any, true_labels: Any, num_classes: int) -> np.ndarray:
    """The transition between true and given labels, in cleanlab's convention.

    Args:
        given_labels: Given (noisy) labels, shape (N,).
        true_labels: True labels, shape (N,).
        num_classes: Number of classes C.

    Returns:
        Float array (C, C) with ``[i, j] = #(given = i, true = j) / #(true = j)``; the column
        of a class without samples is the identity column.

    Raises:
        ValueError: If the label arrays differ in length or hold values outside ``[0, C)``.
    """
    c = check_num_classes(num_classes)
    given = as_label_array(given_labels, name="given_labels")
    true = as_label_array(true_labels, name="true_labels")
    if given.shape != true.shape:
        raise ValueError(
            f"given_labels and true_labels must have the same length, got {given.shape[0]} "
            f"and {true.shape[0]}"
        )
    check_label_range(given, c, name="given_labels")
    check_label_range(true, c, name="true_labels")
    counts = np.zeros((c, c), dtype=np.float64)
    np.add.at(counts, (given, true), 1.0)
    col = counts.sum(axis=0)
    out = np.eye(c, dtype=np.float64)
    present = col > 0
    out[:, present] = counts[:, present] / col[present]
    return out


def _flip_exact(
    true: np.ndarray,
    rate: float,
    num_classes: int,
    rng: np.random.Generator,
    *,
    pair: bool,
    mapping: dict[int, int] | None = None,
) -> np.ndarray:
    """Flips exactly ``round(rate * n_c)`` samples of every class ``c`` (of every class in
    ``mapping``, to ``mapping[c]``, when given)."""
    given = true.copy()
    for c in range(num_classes):
        if mapping is not None and c not in mapping:
            continue
        members = np.flatnonzero(true == c)
        k = int(round(rate * members.size))
        if k == 0:
            continue
        chosen = rng.choice(members, size=k, replace=False)
        if mapping is not None:
            given[chosen] = mapping[c]
        elif pair:
            given[chosen] = (c + 1) % num_classes
        else:
            other = rng.integers(0, num_classes - 1, size=k)
            given[chosen] = other + (other >= c)  # skip c itself: uniform over the others
    return given


def _random_matrix_noise(
    true: np.ndarray, rate: float, sparsity: float, num_classes: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    from cleanlab.benchmarking.noise_generation import (
        generate_noise_matrix_from_trace,
        generate_noisy_labels,
    )

    k = num_classes
    trace = k * (1.0 - rate)
    if trace <= 1.0:
        raise ValueError(
            f"rate={rate} is too high for kind='random_matrix' with {k} classes: the noise "
            f"matrix trace K*(1-rate)={trace:.3f} must exceed 1, i.e. rate < {1 - 1 / k:.4f}"
        )
    counts = np.bincount(true, minlength=k)
    if (counts == 0).any():
        absent = np.flatnonzero(counts == 0).tolist()
        raise ValueError(
            f"kind='random_matrix' needs every class among the labels; class(es) {absent} "
            "have no samples"
        )
    py = counts / counts.sum()
    # cleanlab draws from NumPy's global RNG; keep the caller's global state untouched.
    state = np.random.get_state()
    try:
        matrix = generate_noise_matrix_from_trace(
            k,
            trace=trace,
            frac_zero_noise_rates=sparsity,
            py=py,
            valid_noise_matrix=True,
            seed=seed,
        )
        if matrix is None:
            raise ValueError(
                f"could not generate a valid random noise matrix for rate={rate}, "
                f"sparsity={sparsity}, {k} classes; try a lower rate or sparsity"
            )
        np.random.seed(seed)
        given = as_label_array(generate_noisy_labels(true, matrix))
    finally:
        np.random.set_state(state)
    return given, np.asarray(matrix, dtype=np.float64)


def check_mapping(mapping: Mapping[Any, Any], num_classes: int) -> dict[int, int]:
    """``{source: target}`` class ids in ``[0, C)``, source != target; errors name the pair."""
    if not isinstance(mapping, Mapping) or not mapping:
        raise ValueError(
            f"noise mapping must be a non-empty {{source: target}} map, got {mapping!r}"
        )
    out = {}
    for src, dst in mapping.items():
        ok = all(is_int(v) and 0 <= v < num_classes for v in (src, dst))
        if not ok or src == dst:
            raise ValueError(
                f"noise mapping {src!r}: {dst!r} must map a class id in [0, {num_classes}) to "
                "another one (or a class name to another, through the data module)"
            )
        out[int(src)] = int(dst)
    return out


def resolve_mapping(mapping: Mapping[Any, Any], class_names: Sequence[str]) -> dict[int, int]:
    """A mapping given by class names (or ids, or their strings) as class ids."""
    names = [str(n) for n in class_names]

    def one(v: Any) -> int:
        if is_int(v):
            return int(v)
        if str(v) in names:
            return names.index(str(v))
        if str(v).isdigit():
            return int(v)
        raise ValueError(f"noise mapping names class {v!r}, which is not one of {names[:20]}")

    if not isinstance(mapping, Mapping):
        raise ValueError(f"noise mapping must be a {{source: target}} map, got {mapping!r}")
    return check_mapping({one(k): one(v) for k, v in mapping.items()}, len(names))


def inject_noise(
    labels: Any,
    *,
    kind: str,
    rate: float,
    num_classes: int,
    seed: int,
    sparsity: float = 0.0,
    mapping: Mapping[int, int] | None = None,
) -> NoiseResult:
    """Corrupts labels with a known, seeded noise process.

    Kinds:
        * ``"none"``: labels unchanged.
        * ``"symmetric"``: in every class ``c``, exactly ``round(rate * n_c)`` samples (chosen
          at random) get a label drawn uniformly from the *other* classes.
        * ``"asymmetric"``: pair flipping; in every class ``c``, exactly ``round(rate * n_c)``
          samples are relabelled ``(c + 1) % C``. With ``rate >= 0.5`` the flipped class
          becomes the majority of those samples (a warning is logged). With ``mapping``
          (``{source class: target class}``, e.g. CIFAR-10's truck→automobile,
          bird→airplane, deer→horse, cat↔dog) only the classes in it flip, each to its target.
        * ``"random_matrix"``: the confident-learning paper's setup: a random noise matrix with
          trace ``C * (1 - rate)`` and a fraction ``sparsity`` of zero off-diagonal rates
          (``cleanlab.benchmarking.noise_generation``), then labels drawn from it.

    ``round`` is Python's ``round`` (halves go to the even number).

    Args:
        labels: True labels, shape (N,), values in ``[0, num_classes)``.
        kind: One of :data:`NOISE_KINDS`.
        rate: Noise rate in [0, 1).
        num_classes: Number of classes C (>= 2 unless ``kind == "none"``).
        seed: Random seed; the same seed gives the same noisy labels.
        sparsity: Fraction of zero off-diagonal noise rates in [0, 1]; used by
            ``"random_matrix"`` only.
        mapping: ``"asymmetric"`` only: ``{source: target}`` class ids (see above).

    Returns:
        A :class:`NoiseResult`. The input ``labels`` are not modified.

    Raises:
        ValueError: For an unknown kind, a rate outside [0, 1), sparsity outside [0, 1],
            labels outside ``[0, C)`` or too few classes.
    """
    if kind not in NOISE_KINDS:
        raise ValueError(f"kind must be one of {list(NOISE_KINDS)}, got {kind!r}")
    rate = check_float("rate", rate, low=0, high=1, high_open=True)
    sparsity = check_float("sparsity", sparsity, low=0, high=1)
    seed = check_int("seed", seed, minimum=0)
    c = check_num_classes(num_classes)
    true = as_label_array(labels)
    check_label_range(true, c)
    if kind != "none" and c < 2:
        raise ValueError(f"kind={kind!r} needs num_classes >= 2, got {c}")
    if mapping is not None:
        mapping = check_mapping(mapping, c)
        if kind != "asymmetric":
            raise ValueError(f"a noise mapping is for kind='asymmetric', got kind={kind!r}")
    if sparsity and kind != "random_matrix":
        logger.debug("sparsity=%s is ignored for kind=%r", sparsity, kind)

    target = None
    if kind == "none" or rate == 0.0:
        given = true.copy()
    elif kind == "symmetric":
        given = _flip_exact(true, rate, c, np.random.default_rng(seed), pair=False)
    elif kind == "asymmetric":
        if rate >= 0.5:
            logger.warning(
                "asymmetric noise with rate=%s >= 0.5: the flipped class (c+1) %% C becomes the "
                "majority label of class c, so the noise is not learnable as noise",
                rate,
            )
        given = _flip_exact(true, rate, c, np.random.default_rng(seed), pair=True, mapping=mapping)
    else:
        given, target = _random_matrix_noise(true, rate, sparsity, c, seed)

    is_noisy = given != true
    result = NoiseResult(
        given_labels=given,
        true_labels=true,
        is_noisy=is_noisy,
        noise_matrix=empirical_noise_matrix(given, true, c),
        kind=kind,
        rate=rate,
        sparsity=sparsity,
        seed=seed,
        target_noise_matrix=target,
    )
    logger.info(
        "injected %s noise (rate=%s): %d of %d labels changed",
        kind,
        rate,
        result.num_noisy,
        true.shape[0],
    )
    return result


def save_noise(
    result: NoiseResult, directory: str | os.PathLike, sources: Sequence[str] | None = None
) -> None:
    """Writes the noise ground truth to ``directory`` (created if needed).

    Files:
        * ``labels.csv``: columns ``index, given_label, true_label, is_noisy, source`` (one row
          per sample; ``source`` is ``sources[i]`` or ``"row:{i}"``).
        * ``noise_matrix_true.csv``: the applied (C, C) matrix; first column ``given_label``
          holds the row's given label, the other columns are headed by the true label
          ``0..C-1``. Read back with ``pd.read_csv(path, index_col=0).to_numpy()``.

    Args:
        result: The :class:`NoiseResult` to save.
        directory: Output folder.
        sources: Optional origin of each sample, length N.

    Raises:
        ValueError: If ``sources`` does not have one entry per sample.
    """
    n = int(result.given_labels.shape[0])
    if sources is None:
        src = [f"row:{i}" for i in range(n)]
    else:
        src = [str(s) for s in sources]
        if len(src) != n:
            raise ValueError(f"sources must have one entry per sample ({n}), got {len(src)}")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    neutralize(  # sources (file names) are text a spreadsheet could run: dcloop.csvsafe
        pd.DataFrame(
            {
                "index": np.arange(n, dtype=np.int64),
                "given_label": result.given_labels.astype(np.int64),
                "true_label": result.true_labels.astype(np.int64),
                "is_noisy": result.is_noisy.astype(bool),
                "source": src,
            }
        )
    ).to_csv(out / "labels.csv", index=False)
    c = result.noise_matrix.shape[0]
    matrix = pd.DataFrame(result.noise_matrix, columns=[str(j) for j in range(c)])
    matrix.index.name = "given_label"
    matrix.to_csv(out / "noise_matrix_true.csv")
    logger.info("saved noise ground truth (%d rows) to %s", n, out)
