"""Input checks and conversion for the public ``dcloop.cl`` functions.

Every public function calls :func:`prepare_inputs` exactly once. The probability checks (finite,
in ``[0, 1]``, rows summing to 1) need a read of the whole matrix: ``prepare_inputs`` makes that
pass itself unless told ``check_probs=False``, which the functions built on
:func:`dcloop.cl.count.scan` do, because the scan makes the same checks (:func:`check_row_stats`)
in its own pass, before any result is used. The private engine functions never re-check.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from dcloop._checks import check_int

#: Allowed distance of a probability from ``[0, 1]`` (cleanlab's ``FLOATING_POINT_COMPARISON``).
PROB_RANGE_ATOL = 1e-6
#: Allowed ``|row sum - 1|`` per input dtype. Rows inside the tolerance are used *as given*
#: (no renormalisation, as cleanlab does); rows outside raise ``ValueError``.
ROW_SUM_ATOL = {
    torch.float16: 1e-2,
    torch.bfloat16: 1e-2,
    torch.float32: 1e-3,
    torch.float64: 1e-3,
}
#: Elements per ``[chunk, K]`` working block: small on CPU (1 MiB of float32) so that a chunk
#: stays in cache while several reductions read it and the transient blocks stay few MB (the
#: fused kernels read float32/float64 input in place, without blocks); large on accelerators
#: to keep kernel launches few.
CPU_CHUNK_ELEMENTS = 1 << 18
DEVICE_CHUNK_ELEMENTS = 1 << 24
#: Intra-op threads torch may use while the engine runs on CPU (restored afterwards); override
#: with the environment variable ``DCLOOP_CL_THREADS`` (``0`` = leave torch's setting alone).
#: The engine issues thousands of short memory-bound ops; with several OpenMP threads each op
#: is a parallel region whose barrier waits for a descheduled thread whenever the cores are
#: shared (data-loader workers, other jobs). On the 2-core benchmark host, with other processes
#: running, 2 threads were 3-20x slower than 1 (scripts/results/bench_cl_engine.md: 1 thread).
CPU_THREADS = 1
#: Set to ``0`` to run the torch code instead of the fused numba kernels on the host.
KERNELS_ENV = "DCLOOP_CL_NUMBA"

_F = TypeVar("_F", bound=Callable[..., Any])


def public_entry(fn: _F) -> _F:
    """Decorator of the public functions ``fn(labels, pred_probs, ...)``: no autograd graph,
    and at most :data:`CPU_THREADS` intra-op threads unless ``pred_probs`` is on an accelerator.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        probs = args[1] if len(args) > 1 else kwargs.get("pred_probs")
        want = int(os.environ.get("DCLOOP_CL_THREADS", CPU_THREADS))
        have = torch.get_num_threads()
        on_device = isinstance(probs, torch.Tensor) and probs.device.type != "cpu"
        with torch.no_grad():
            if on_device or want <= 0 or want >= have:
                return fn(*args, **kwargs)
            torch.set_num_threads(want)
            try:
                return fn(*args, **kwargs)
            finally:
                torch.set_num_threads(have)

    return wrapper  # type: ignore[return-value]


@dataclass(frozen=True)
class Inputs:
    """Validated inputs shared by the private engine functions.

    Attributes:
        labels: ``(N,)`` int64 tensor on ``probs.device``, values in ``[0, K)``.
        probs: ``(N, K)`` floating tensor as given (dtype and device unchanged, no copy).
        compute_dtype: float64 for float64 input, else float32 (half types are upcast per chunk).
        chunk_rows: rows per ``[chunk, K]`` block.
        as_numpy: whether results go back to the caller as numpy arrays.
    """

    labels: torch.Tensor
    probs: torch.Tensor
    compute_dtype: torch.dtype
    chunk_rows: int
    as_numpy: bool

    @property
    def n(self) -> int:
        return int(self.probs.shape[0])

    @property
    def k(self) -> int:
        return int(self.probs.shape[1])

    @property
    def device(self) -> torch.device:
        return self.probs.device

    def chunks(self) -> Iterator[tuple[int, int]]:
        """Yield ``(start, stop)`` row ranges covering ``[0, N)``."""
        for start in range(0, self.n, self.chunk_rows):
            yield start, min(start + self.chunk_rows, self.n)

    def block(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``[start, stop)`` of ``probs`` in ``compute_dtype`` (a copy only for half input)."""
        return self.probs[start:stop].to(self.compute_dtype)

    def out(self, value: torch.Tensor) -> torch.Tensor | np.ndarray:
        """Return ``value`` in the caller's array family (numpy on host, or torch as is)."""
        return value.cpu().numpy() if self.as_numpy else value

    def out_matrix(self, value: np.ndarray) -> torch.Tensor | np.ndarray:
        """Return a host ``(K, K)`` numpy matrix in the caller's array family and device."""
        return value if self.as_numpy else torch.from_numpy(value).to(self.device)


def _as_tensor(x: Any, name: str) -> tuple[torch.Tensor, bool]:
    if isinstance(x, torch.Tensor):
        return x, False
    arr = np.asarray(x)
    if arr.dtype == object:
        raise TypeError(f"{name} must be a torch tensor or numpy array; got {type(x).__name__}")
    if arr.dtype.byteorder == ">" or any(s < 0 for s in arr.strides):
        arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("="))
    return torch.from_numpy(arr), True


def default_chunk_rows(num_classes: int, device: torch.device) -> int:
    """Rows per chunk for a ``[chunk, K]`` working block on ``device``."""
    budget = CPU_CHUNK_ELEMENTS if device.type == "cpu" else DEVICE_CHUNK_ELEMENTS
    return max(1, budget // max(num_classes, 1))


@functools.cache
def _kernels_importable() -> bool:
    """Import (and compile or load from numba's cache) the kernels once; ``False`` if that
    fails for any reason (numba missing, no writable cache location, ...)."""
    try:
        import dcloop.cl._kernels  # noqa: F401
    except Exception as exc:  # pragma: no cover - numba ships with umap-learn, a dependency
        logging.getLogger(__name__).warning(
            "dcloop.cl: numba kernels unavailable (%s: %s); using the torch code",
            type(exc).__name__,
            exc,
        )
        return False
    return True


#: Below this many matrix entries the torch code runs on the host: loading the compiled
#: kernels costs about a second per process (compiling them, 10-30 s once after an install),
#: more than the torch passes take on a matrix this small (~35 ms at 1M entries).
KERNELS_MIN_ENTRIES = 1 << 20


def use_kernels(inputs: Inputs) -> bool:
    """Whether the fused numba kernels run the passes: host tensors, numba importable, and
    ``DCLOOP_CL_NUMBA`` ``1`` (always), or unset / ``auto`` with at least
    :data:`KERNELS_MIN_ENTRIES` entries; ``0`` never."""
    mode = os.environ.get(KERNELS_ENV, "auto")
    if inputs.device.type != "cpu" or mode == "0":
        return False
    if mode != "1" and inputs.n * inputs.k < KERNELS_MIN_ENTRIES:
        return False
    return _kernels_importable()


def prepare_inputs(
    labels: Any, pred_probs: Any, *, chunk_size: int | None = None, check_probs: bool = True
) -> Inputs:
    """Validate ``labels`` / ``pred_probs`` once and wrap them for the engine.

    Args:
        labels: ``(N,)`` integer tensor or array of given labels.
        pred_probs: ``(N, K)`` float16/bfloat16/float32/float64 tensor or array of predicted
            class probabilities; each row must sum to 1 within :data:`ROW_SUM_ATOL`.
        chunk_size: rows per ``[chunk, K]`` block; ``None`` picks one from the device.
        check_probs: check the probabilities here (one pass over them); ``False`` leaves that
            to the caller's own pass (:func:`check_row_stats`), which must run before any
            result is returned.

    Returns:
        The validated :class:`Inputs`.

    Raises:
        TypeError: unsupported container or dtype.
        ValueError: shape mismatch, labels out of range, non-finite probabilities, probabilities
            outside ``[0, 1]`` or rows that do not sum to 1.
    """
    probs, probs_np = _as_tensor(pred_probs, "pred_probs")
    lab, _ = _as_tensor(labels, "labels")
    if probs.dtype not in ROW_SUM_ATOL:
        raise TypeError(
            "pred_probs must be float16, bfloat16, float32 or float64; "
            f"got {str(probs.dtype).replace('torch.', '')}"
        )
    if probs.ndim != 2:
        raise ValueError(f"pred_probs must have shape (N, K); got shape {tuple(probs.shape)}")
    n, k = probs.shape
    if k < 2:
        raise ValueError(f"pred_probs must have at least 2 columns (classes); got K={k}")
    if n < 1:
        raise ValueError("pred_probs must have at least one row; got N=0")
    if lab.ndim != 1:
        raise ValueError(f"labels must have shape (N,); got shape {tuple(lab.shape)}")
    if lab.shape[0] != n:
        raise ValueError(
            f"labels and pred_probs must have the same length; got {lab.shape[0]} labels and "
            f"pred_probs of shape {tuple(probs.shape)}"
        )
    if lab.dtype.is_floating_point or lab.dtype.is_complex or lab.dtype == torch.bool:
        raise TypeError(
            f"labels must have an integer dtype; got {str(lab.dtype).replace('torch.', '')}"
        )
    if chunk_size is not None:
        chunk_size = check_int("chunk_size", chunk_size, minimum=1, why="or None for the default")
    lab = lab.to(device=probs.device, dtype=torch.int64)
    lo, hi = (int(v) for v in torch.aminmax(lab))
    if lo < 0 or hi >= k:
        raise ValueError(f"labels must be in [0, {k}); got min={lo}, max={hi}")
    rows = int(chunk_size) if chunk_size is not None else default_chunk_rows(k, probs.device)
    compute_dtype = torch.float64 if probs.dtype == torch.float64 else torch.float32
    inputs = Inputs(lab, probs, compute_dtype, min(rows, n), probs_np)
    if check_probs:
        _check_probabilities(inputs)
    return inputs


def _value_range(inputs: Inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Smallest and largest value of ``pred_probs`` (0-d tensors; one chunked pass)."""
    dev = inputs.device
    lo = torch.full((), float("inf"), dtype=inputs.compute_dtype, device=dev)
    hi = torch.full((), -float("inf"), dtype=inputs.compute_dtype, device=dev)
    for start, stop in inputs.chunks():
        b_lo, b_hi = torch.aminmax(inputs.block(start, stop))
        lo, hi = torch.minimum(lo, b_lo), torch.maximum(hi, b_hi)
    return lo, hi


def _check_probabilities(inputs: Inputs) -> None:
    """One chunked pass: finite values, range ``[0, 1]`` and row sums close to 1."""
    sums = torch.empty(inputs.n, dtype=inputs.compute_dtype, device=inputs.device)
    lo = torch.full((), float("inf"), dtype=inputs.compute_dtype, device=inputs.device)
    hi = torch.full((), -float("inf"), dtype=inputs.compute_dtype, device=inputs.device)
    for start, stop in inputs.chunks():
        block = inputs.block(start, stop)
        torch.sum(block, dim=1, out=sums[start:stop])
        b_lo, b_hi = torch.aminmax(block)
        lo, hi = torch.minimum(lo, b_lo), torch.maximum(hi, b_hi)
    lo_v, hi_v = float(lo), float(hi)
    out = lo_v < -PROB_RANGE_ATOL or hi_v > 1 + PROB_RANGE_ATOL
    check_row_stats(inputs, sums, out_of_range=out, value_range=(lo_v, hi_v))


def check_row_stats(
    inputs: Inputs,
    sums: torch.Tensor,
    *,
    out_of_range: bool,
    value_range: tuple[float, float] | None = None,
) -> None:
    """Raise the ``ValueError`` for invalid ``pred_probs`` from a pass's results.

    Args:
        inputs: the inputs the pass read.
        sums: ``(N,)`` row sums in compute dtype (NaN or inf anywhere in a row makes its sum
            non-finite).
        out_of_range: whether some value is below ``-PROB_RANGE_ATOL`` or above
            ``1 + PROB_RANGE_ATOL``.
        value_range: ``(min, max)`` of the values when the pass has them; otherwise they are
            computed here, only when ``out_of_range`` (error path).

    Raises:
        ValueError: non-finite values (checked first), values outside ``[0, 1]``, then rows that
            do not sum to 1 within :data:`ROW_SUM_ATOL`; each message names the values.
    """
    bad = ~torch.isfinite(sums)
    n_bad = int(bad.sum())
    first_bad = int(torch.nonzero(bad)[0, 0]) if n_bad else -1
    del bad
    if n_bad or out_of_range:
        raise_invalid(inputs, n_bad=n_bad, first_bad=first_bad, out_of_range=out_of_range,
                      value_range=value_range)  # fmt: skip
    deviation = (sums - 1).abs_()  # one (N,) temporary
    worst = float(deviation.amax())
    atol = ROW_SUM_ATOL[inputs.probs.dtype]
    if worst > atol:
        first = int(torch.nonzero(deviation > atol)[0, 0])
        raise_invalid(inputs, n_bad=0, first_bad=-1, out_of_range=False, worst=worst,
                      first_off=first)  # fmt: skip


def raise_invalid(
    inputs: Inputs,
    *,
    n_bad: int,
    first_bad: int,
    out_of_range: bool,
    worst: float = 0.0,
    first_off: int = -1,
    value_range: tuple[float, float] | None = None,
) -> None:
    """Raise the ``ValueError`` that per-row statistics of a pass call for, if any.

    Args:
        inputs: the inputs the pass read.
        n_bad, first_bad: number of rows with NaN or inf, and the first of them.
        out_of_range: some value below ``-PROB_RANGE_ATOL`` or above ``1 + PROB_RANGE_ATOL``.
        worst: largest ``|row sum - 1|`` over the rows.
        first_off: first row with ``|row sum - 1|`` above the dtype's :data:`ROW_SUM_ATOL`.
        value_range: ``(min, max)`` of the values if known (else computed, error path only).

    Raises:
        ValueError: non-finite values (checked first), values outside ``[0, 1]``, then rows that
            do not sum to 1; each message names the values.
    """
    if n_bad:
        raise ValueError(
            f"pred_probs must be finite; got {n_bad} row(s) with NaN or inf "
            f"(first: row {first_bad})"
        )
    if out_of_range:
        lo_v, hi_v = value_range if value_range is not None else map(float, _value_range(inputs))
        raise ValueError(f"pred_probs must be in [0, 1]; got min={lo_v:.6g}, max={hi_v:.6g}")
    atol = ROW_SUM_ATOL[inputs.probs.dtype]
    if worst > atol:
        row_sum = float(inputs.block(first_off, first_off + 1).sum())
        raise ValueError(
            f"pred_probs rows must sum to 1 (atol={atol:g}); got max |row sum - 1| = {worst:.3g} "
            f"(first offending row {first_off} sums to {row_sum:.6g}); renormalise the rows first"
        )
