"""Fused CPU kernels (numba) for the engine's two passes over ``pred_probs``.

Imported lazily by :func:`dcloop.cl.count.scan` and :func:`dcloop.cl._prune.prune_by_noise_rate`
for host tensors; without numba (or with ``DCLOOP_CL_NUMBA=0``) the engine runs its torch code,
which gives the same results (``tests/test_cl_engine_passes.py``).

* :func:`scan_rows` (pass 1): per row, in one read: the row sum and out-of-range count (input
  validation), the argmax (first index on ties), the number of classes at or above their
  threshold and the confident guess; the ``(K, K)`` confident counts are accumulated on the fly.
* :func:`prune_noise_rate` (pass 2): cleanlab's ``_prune_by_count`` in row order: each row is
  read at most once, only at the columns its class prunes towards, each (class, column) line
  keeping its best candidates in a small heap; rows that pass 1's bound shows cannot enter any
  line are not read at all.

Both run single-threaded (``dcloop.cl._inputs.CPU_THREADS``) and compile once per dtype
(``cache=True`` keeps the machine code on disk for later processes).
"""

from __future__ import annotations

import numba as nb
import numpy as np
from numba import types
from numba.extending import overload

#: Reassociation only, so that row sums vectorise; no NaN/inf assumptions (validation needs them).
_FASTMATH = {"reassoc"}


def _load(p, table, i, j):  # pragma: no cover - replaced by the overload inside numba
    raise NotImplementedError


@overload(_load, inline="always")
def _load_impl(p, table, i, j):
    """``p[i, j]`` in compute dtype; half types arrive as uint16 bits decoded by ``table``."""
    if p.dtype == types.uint16:
        return lambda p, table, i, j: table[p[i, j]]
    return lambda p, table, i, j: p[i, j]


@nb.njit(nogil=True, cache=True, fastmath=_FASTMATH)
def scan_rows(
    p, bits, ubits, sign, inf_bits, row0, labels, bound, lo_lim, hi_lim, atol, row_max, pred,
    guess, confident, by_guess, other_bits,
):  # fmt: skip
    """Pass 1 over the rows of ``p`` (rows ``row0 + i`` of the matrix).

    Returns the input checks' statistics: ``(n_out, n_bad, first_bad, worst, first_off)`` =
    rows with a value below ``lo_lim`` or above ``hi_lim`` (limits in ``p``'s dtype), rows whose
    sum is not finite (NaN or inf somewhere) and the first of them, the largest ``|row sum - 1|``
    over the other rows and the first row where it exceeds ``atol`` (-1: none).

    ``bits`` / ``ubits`` are ``p`` viewed as signed / unsigned integers of the same width
    (``sign``: the sign bit). For a valid row (finite, values >= -1e-6, sum ~1, hence a
    positive maximum) the signed maximum is the bit pattern of the float maximum, and equal
    positive floats have equal bits, so the first index holding it is ``np.argmax``'s answer;
    the unsigned maximum has the sign bit set only if some value is negative. Integer
    reductions vectorise where float ``max`` / ``argmax`` do not. Invalid rows get meaningless
    results, but they fail the checks and the caller raises.

    ``other_bits[r]`` receives the bits of ``max_{j != labels[r]} p[r, j]`` when that maximum is
    ``>= 0`` (exact, as above), else of ``+inf`` (``inf_bits``): an upper bound that pass 2 uses
    to skip rows that cannot enter any pruning line.
    """
    n, k = p.shape
    n_out = n_bad = 0
    first_bad = first_off = -1
    worst = 0.0
    for i in range(n):
        row, rb, ub = p[i], bits[i], ubits[i]
        r = row0 + i
        lab = labels[r]
        s = row[0] - row[0]  # zero of the row's dtype (NaN if row[0] is not finite)
        top, umax = rb[0], ub[0]
        other = other0 = rb[(lab + 1) % k]
        cnt = np.int32(0)
        idx = np.int32(0)
        for j in range(k):
            v = row[j]
            s += v
            top = max(top, rb[j])
            umax = max(umax, ub[j])
            other = max(other, rb[j] if j != lab else other0)
            above = v >= bound[j]
            cnt += np.int32(above)
            idx += np.int32(j) if above else np.int32(0)
        arg = np.int32(k)
        for j in range(k):  # first index of the maximum, vectorised (no early exit)
            arg = min(arg, np.int32(j) if rb[j] == top else np.int32(k))
        best = row[arg]
        other_bits[r] = other if other >= 0 else inf_bits
        if np.isfinite(s):
            dev = np.float64(abs(s - 1))
            worst = max(worst, dev)
            if dev > atol and first_off < 0:
                first_off = r
        else:
            n_bad += 1
            if first_bad < 0:
                first_bad = r
        row_max[r] = best
        pred[r] = arg
        g = arg if cnt > 1 else idx
        guess[r] = g
        confident[r] = cnt > 0
        if cnt > 0:
            by_guess[g, lab] += 1
        if best > hi_lim:
            n_out += 1
        elif umax >= sign:  # some value is negative (or -0.0): look for one below the limit
            for j in range(k):
                if row[j] < lo_lim:
                    n_out += 1
                    break
    return n_out, n_bad, first_bad, worst, first_off


@nb.njit(nogil=True, cache=True, inline="always")
def _below(hv, hi, a, b):
    """Heap order: entry ``a`` ranks below ``b`` (smaller margin, or equal and later row)."""
    return hv[a] < hv[b] or (hv[a] == hv[b] and hi[a] > hi[b])


@nb.njit(nogil=True, cache=True)
def _sift_down(hv, hi, off, m):
    """Restore the min-heap ``hv/hi[off : off + m]`` after its root was replaced."""
    t = 0
    while True:
        child = 2 * t + 1
        if child >= m:
            return
        if child + 1 < m and _below(hv, hi, off + child + 1, off + child):
            child += 1
        if not _below(hv, hi, off + child, off + t):
            return
        hv[off + t], hv[off + child] = hv[off + child], hv[off + t]
        hi[off + t], hi[off + child] = hi[off + child], hi[off + t]
        t = child


@nb.njit(nogil=True, cache=True)
def _push(hv, hi, off, n_in, v, r):
    """Add ``(v, r)`` to the min-heap ``hv/hi[off : off + n_in]`` (``r`` the latest row)."""
    t = n_in
    hv[off + t] = v
    hi[off + t] = r
    while t > 0:
        parent = (t - 1) // 2
        if not _below(hv, hi, off + t, off + parent):
            return
        hv[off + t], hv[off + parent] = hv[off + parent], hv[off + t]
        hi[off + t], hi[off + parent] = hi[off + parent], hi[off + t]
        t = parent


@nb.njit(nogil=True, cache=True)
def prune_noise_rate(
    p, table, labels, self_conf, other_max, line_ptr, line_cols, line_m, replay, mask, straddle
):
    """Pass 2, in row order: for each class ``c`` and each of its lines ``g`` in
    ``line_ptr[c]:line_ptr[c + 1]``, flag the ``line_m[g]`` rows given ``c`` with the largest
    margin ``p[:, line_cols[g]] - p[:, c]``, ties at the cut-off to the lowest row indices.

    One sequential read of the matrix: every line keeps its ``m`` best (margin, row) so far in
    a min-heap ordered by (margin, -row), whose root is the entry to evict; all heaps together
    hold ``sum(line_m)`` entries (the number of examples to prune, at most ~N). ``bar[g]`` is the
    margin a row must beat to enter line ``g`` (``-inf`` while its heap fills). A row whose
    margins are all at most ``other_max[i] - p[i, c]`` (pass 1's bound) is skipped unread when
    that bound does not beat the lowest bar of its class. With ``replay``, a second read counts,
    for each line, the margins above and at its cut-off; lines whose tie straddles the cut-off
    are left out and listed in ``straddle`` for the caller (returns how many).
    """
    n = p.shape[0]
    n_classes, n_lines = line_ptr.size - 1, line_m.size
    off = np.empty(n_lines + 1, np.int64)
    off[0] = 0
    for g in range(n_lines):
        off[g + 1] = off[g] + line_m[g]
    hv = np.empty(max(off[n_lines], 1), self_conf.dtype)
    hi = np.empty(max(off[n_lines], 1), np.int64)
    bar = np.full(max(n_lines, 1), -np.inf, self_conf.dtype)
    low_bar = np.full(n_classes, -np.inf, self_conf.dtype)  # min of the class's bars
    seen = np.zeros(n_classes, np.int64)  # rows of each class read so far
    for i in range(n):
        c = labels[i]
        l0, l1 = line_ptr[c], line_ptr[c + 1]
        if l0 == l1:
            continue
        r = seen[c]
        seen[c] = r + 1
        base = self_conf[i]
        if other_max[i] - base <= low_bar[c]:
            continue  # no margin of this row can beat a bar of its class
        low = np.inf
        for g in range(l0, l1):
            v = _load(p, table, i, line_cols[g]) - base
            if v > bar[g]:
                o, m = off[g], line_m[g]
                if r < m:
                    _push(hv, hi, o, r, v, i)
                    if r + 1 == m:
                        bar[g] = hv[o]
                else:
                    hv[o] = v
                    hi[o] = i
                    _sift_down(hv, hi, o, m)
                    bar[g] = hv[o]
            low = min(low, bar[g])
        low_bar[c] = low
    room = line_m.copy()
    at = np.zeros(n_lines, np.int64)
    if replay:
        for i in range(n):
            c = labels[i]
            base = self_conf[i]
            for g in range(line_ptr[c], line_ptr[c + 1]):
                v = _load(p, table, i, line_cols[g]) - base
                if v > hv[off[g]]:
                    room[g] -= 1
                elif v == hv[off[g]]:
                    at[g] += 1
    n_straddle = 0
    for g in range(n_lines):
        if at[g] > room[g]:
            straddle[n_straddle] = g
            n_straddle += 1
            continue
        for t in range(off[g], off[g + 1]):
            mask[hi[t]] = True
    return n_straddle


def _compile_common() -> None:
    """Compile (or load from the on-disk cache) the specialisations the engine uses, at import:
    the first ``find_label_issues`` call then does not allocate compiler memory mid-pass."""
    for dt, it, ut in ((np.float32, np.int32, np.uint32), (np.float64, np.int64, np.uint64)):
        p = np.full((2, 2), 0.5, dt)
        labels = np.zeros(2, np.int64)
        vec_f, vec_i, vec_32 = np.empty(2, dt), np.empty(2, np.int64), np.empty(2, np.int32)
        scan_rows(
            p, p.view(it), p.view(ut), ut(1) << ut(8 * p.itemsize - 1), it(0), 0, labels, p[0],
            dt(-1), dt(2), 1e-3, vec_f, vec_i, vec_32, np.empty(2, np.bool_),
            np.zeros((2, 2), np.int64), vec_f.view(it),
        )  # fmt: skip
        for probs, table in ((p, np.empty(1, dt)), (np.zeros((2, 2), np.uint16), p[0])):
            if probs.dtype == np.uint16 and dt == np.float64:
                continue  # half types are decoded to float32
            prune_noise_rate(
                probs, table, labels, p[0], p[0], np.array([0, 1, 1]), np.array([1]),
                np.array([1]), True, np.zeros(2, np.bool_), vec_i,
            )  # fmt: skip


_compile_common()
