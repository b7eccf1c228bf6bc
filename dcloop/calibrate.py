"""Calibrated evidence: the OOF softmax's temperature, fitted together with the label noise.

Why this exists: confident learning estimates the noise rate from the out-of-fold (OOF)
softmax, and a network trained on noisy labels is *under*-confident about the true label
(its softmax spreads the noise it was taught over the other classes). The per-class
thresholds then sit low, the model's own mistakes count as label errors, and the estimate
runs high: 54 % against 40 % on spoken digits (``scripts/results/bench_calibration.md``).

A temperature fitted the usual way, by the negative log-likelihood of the *given* labels,
does not help: the given labels are noisy, so the best temperature keeps the softmax as
flat as the noise (measured: temperatures near 1). Fitting it on clean validation labels
would help, but a user's validation labels are as noisy as the training labels.

:func:`calibrate` fits both at once, on the noisy labels alone: each sample's given label is
modelled as its true label ``t ~ softmax(z / T_k)`` passed through a noise matrix
``P(given=g | true=t)``, and the temperatures ``T_k`` (one per fold replica: the OOF rows of
fold ``k`` are replica ``k``'s) and the noise matrix maximise the likelihood of the given
labels. The noise matrix absorbs the noise, so the temperature is free to make the softmax
a calibrated estimate of the *true* label. The result's ``noise_rate`` is the mean posterior
probability that a given label is wrong.

Pure torch, no Trainer: tested in ``tests/test_calibrate.py``.

Example:
    >>> cal = calibrate(evidence, labels, folds)  # doctest: +SKIP
    >>> verdict(labels, cal.probs)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dcloop._checks import check_choice

#: ``cl.calibrate`` values: ``noise_aware`` (:func:`calibrate`), ``none`` (evidence as it is).
CALIBRATE_METHODS = ("noise_aware", "none")

_TINY = 1e-12
_LOG_T_RANGE = (math.log(1 / 50), math.log(50))  # temperatures searched in [0.02, 50]
_GOLDEN = (math.sqrt(5) - 1) / 2


@dataclass(frozen=True)
class Calibration:
    """The result of :func:`calibrate`.

    Attributes:
        probs: ``(N, C)`` calibrated probabilities of the true label (rows sum to 1), dtype
            and device of the evidence.
        temperatures: ``(K,)`` float64 temperature of each fold (``z / T``; ``T < 1``
            sharpens), on the host.
        noise_matrix: ``(C, C)`` float64 ``P(given=i | true=j)`` (columns sum to 1, cleanlab's
            convention), on the host.
        posterior_clean: ``(N,)`` posterior probability that the given label is the true one.
        noise_rate: estimated fraction of wrong given labels, ``1 - mean(posterior_clean)``.
        iterations: rounds of the alternating fit that ran.
    """

    probs: torch.Tensor
    temperatures: torch.Tensor
    noise_matrix: torch.Tensor
    posterior_clean: torch.Tensor
    noise_rate: float
    iterations: int


def calibrate(
    evidence: torch.Tensor,
    labels: torch.Tensor,
    folds: torch.Tensor | None = None,
    *,
    max_iter: int = 30,
    tol: float = 1e-4,
) -> Calibration:
    """Fit a temperature per fold and a noise matrix to the given labels; calibrate.

    Alternating maximisation of the likelihood of the given labels,
    ``sum_i log sum_t softmax(log(evidence_i) / T_{fold_i})_t * M[labels_i, t]``: the noise
    matrix ``M`` in closed form (the expected counts of (given, true) pairs under the
    posterior), then each fold's temperature by a golden-section search of the likelihood
    over ``T in [0.02, 50]``. ``log(evidence)`` stands in for the logits: a softmax is
    invariant to a per-row shift, so ``softmax(log p / T)`` equals temperature scaling of the
    logits that gave ``p``.

    Args:
        evidence: ``(N, C)`` out-of-fold probabilities (the smoothed OOF softmax).
        labels: ``(N,)`` int given labels in ``[0, C)``.
        folds: ``(N,)`` int fold of each row in ``[0, K)`` (the replica whose softmax it
            is); ``None``: one temperature for all rows.
        max_iter: at most this many alternating rounds.
        tol: stop when no temperature moved by more than this (relative) and the noise
            matrix by more than this (absolute) in one round.

    Returns:
        :class:`Calibration`.

    Raises:
        ValueError: shapes or values that do not fit (named in the message).
    """
    evidence, labels, folds = _checked(evidence, labels, folds)
    n, c = evidence.shape
    k = int(folds.max()) + 1 if n else 1
    z = evidence.double().clamp_min(_TINY).log()
    groups = [torch.nonzero(folds == j).squeeze(1) for j in range(k)]
    log_t = torch.zeros(k, dtype=torch.float64)
    noise = torch.full((c, c), 0.2 / max(c - 1, 1), dtype=torch.float64, device=z.device)
    noise.fill_diagonal_(0.8 if c > 1 else 1.0)
    rounds = 0
    for rounds in range(1, max_iter + 1):  # noqa: B007 (the count is reported)
        q = _scaled(z, groups, log_t)
        new_noise = _noise_matrix(q, labels, noise)
        new_log_t = torch.tensor(
            [_fit_log_t(z[g], new_noise[labels[g]]) if len(g) else 0.0 for g in groups],
            dtype=torch.float64,
        )
        moved = float((new_log_t - log_t).abs().max()) if k else 0.0
        changed = float((new_noise - noise).abs().max())
        noise, log_t = new_noise, new_log_t
        if moved <= tol and changed <= tol:
            break
    q = _scaled(z, groups, log_t)
    post = _posterior(q, noise, labels)
    clean = post.gather(1, labels.unsqueeze(1)).squeeze(1)
    return Calibration(
        probs=q.to(evidence.dtype),
        temperatures=log_t.exp().cpu(),
        noise_matrix=noise.cpu(),
        posterior_clean=clean.to(evidence.dtype),
        noise_rate=float(1 - clean.mean()) if n else 0.0,
        iterations=rounds,
    )


def calibrated_evidence(
    evidence: torch.Tensor,
    labels: torch.Tensor,
    folds: torch.Tensor | None = None,
    *,
    method: str = "noise_aware",
) -> torch.Tensor:
    """``(N, C)`` evidence for confident learning: ``method`` ``"noise_aware"`` gives
    :func:`calibrate`'s probabilities, ``"none"`` the evidence unchanged (``cl.calibrate``)."""
    check_choice("calibrate", method, CALIBRATE_METHODS)
    if method == "none":
        return evidence
    return calibrate(evidence, labels, folds).probs


# ------------------------------------------------------------------------------ internals


def _checked(evidence, labels, folds) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    evidence = torch.as_tensor(evidence)
    if evidence.ndim != 2 or not evidence.is_floating_point():
        raise ValueError(
            f"evidence must be a float (N, C) tensor of probabilities; got shape "
            f"{tuple(evidence.shape)}, dtype {evidence.dtype}"
        )
    n, c = evidence.shape
    labels = torch.as_tensor(labels, device=evidence.device).long()
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) like evidence; got {tuple(labels.shape)}")
    if n and (int(labels.min()) < 0 or int(labels.max()) >= c):
        raise ValueError(
            f"labels must be in [0, {c}) (evidence has {c} columns); got values "
            f"{int(labels.min())}..{int(labels.max())}"
        )
    if folds is None:
        folds = torch.zeros(n, dtype=torch.long, device=evidence.device)
    folds = torch.as_tensor(folds, device=evidence.device).long()
    if folds.shape != (n,):
        raise ValueError(f"folds must have shape ({n},) like evidence; got {tuple(folds.shape)}")
    if n and int(folds.min()) < 0:
        raise ValueError(f"folds must be >= 0; got {int(folds.min())}")
    if n and not bool(torch.isfinite(evidence).all()):
        raise ValueError("evidence must be finite; it holds NaN or inf")
    return evidence, labels, folds


def _scaled(z: torch.Tensor, groups: list[torch.Tensor], log_t: torch.Tensor) -> torch.Tensor:
    """``softmax(z / T_k)`` row by row, ``T_k`` the temperature of the row's fold."""
    inv_t = torch.empty(z.shape[0], dtype=z.dtype, device=z.device)
    for j, g in enumerate(groups):
        inv_t[g] = math.exp(-float(log_t[j]))
    return torch.softmax(z * inv_t.unsqueeze(1), dim=1)


def _posterior(q: torch.Tensor, noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``(N, C)`` ``P(true=t | x, given)`` proportional to ``q[:, t] * noise[given, t]``."""
    joint = q * noise[labels]
    return joint / joint.sum(1, keepdim=True).clamp_min(_TINY)


def _noise_matrix(q: torch.Tensor, labels: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """M-step: ``P(given=i | true=j)`` from the posterior's expected (given, true) counts."""
    c = q.shape[1]
    post = _posterior(q, noise, labels)
    counts = torch.zeros(c, c, dtype=q.dtype, device=q.device).index_add_(0, labels, post)
    return counts / counts.sum(0, keepdim=True).clamp_min(_TINY)


def _fit_log_t(z: torch.Tensor, noise_rows: torch.Tensor) -> float:
    """Golden-section search of ``log T`` maximising ``sum log(softmax(z / T) . noise_rows)``.

    ``noise_rows[i] = M[given_i]``: with ``M`` the identity this is the plain negative
    log-likelihood temperature fit.
    """

    def loss(log_t: float) -> float:
        p = torch.softmax(z * math.exp(-log_t), dim=1)
        return float(-(p * noise_rows).sum(1).clamp_min(_TINY).log().sum())

    lo, hi = _LOG_T_RANGE
    a, b = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(40):  # bracket shrinks by 0.618 each step: ~1e-7 of the range
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - _GOLDEN * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + _GOLDEN * (hi - lo)
            fb = loss(b)
    return (lo + hi) / 2
