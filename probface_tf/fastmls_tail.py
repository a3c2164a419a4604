"""Compiled per-entry tail of the all-pairs FastMLS matrix.

One matmul leaves ``2(cos - 1)`` in every entry of a tile; FastMLS then still needs, per entry,
``tile / (1e-10 + s_i + s_j) - log(s_i + s_j)``. As NumPy ufuncs that is four passes over the tile (outer sum,
divide, log, subtract) and costs about a fifth of the matmul. Here it is one vectorised pass compiled by numba:
the float32 log is taken from the exponent bits plus a degree-8 polynomial in the mantissa (the coefficients of
Cephes' ``logf``), which stays within one ulp of the exact log on normal floats (NumPy's float32 log: ~3 ulp).

numba is optional (it comes with the ``cpu`` / ``gpu`` extras). ``apply`` returns False whenever the compiled
pass cannot be used (no numba, not float32, or an ``s_i + s_j`` outside the positive normal float32 range, where
the bit decomposition would not hold); the caller then runs the NumPy passes, which give the same numbers.
"""
from __future__ import annotations

import numpy as np

_F = np.float32
# Cephes logf: log(1 + x) = x - x^2/2 + x^3 P(x) for x in [sqrt(1/2) - 1, sqrt(2) - 1]
_P = tuple(_F(c) for c in (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1,
                           1.4249322787e-1, -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1,
                           3.3333331174e-1))
_LN2_HI, _LN2_LO = _F(0.693359375), _F(-2.12194440e-4)  # ln 2 split so that e * _LN2_HI is exact
_SQRT_HALF_BITS = 0x3F3504F3  # float32 bits of sqrt(1/2): mantissas are mapped into [sqrt(1/2), sqrt(2))
_TINY = np.finfo(np.float32).tiny

_kernels = None  # (with_log, attention_only) compiled on first use; False when numba is missing


def _build():
    try:
        from llvmlite import ir
        from numba import njit, types
        from numba.extending import intrinsic
    except ImportError:
        return False

    @intrinsic
    def bits_of(typingctx, x):  # float32 -> its int32 bit pattern, no conversion
        return types.int32(types.float32), lambda context, builder, sig, args: builder.bitcast(args[0], ir.IntType(32))

    @intrinsic
    def float_of(typingctx, k):  # int32 bit pattern -> float32
        return types.float32(types.int32), lambda context, builder, sig, args: builder.bitcast(args[0], ir.FloatType())

    p0, p1, p2, p3, p4, p5, p6, p7, p8 = _P
    ln2_hi, ln2_lo, offset = _LN2_HI, _LN2_LO, np.int32(_SQRT_HALF_BITS)
    one, half = _F(1), _F(0.5)
    # fastmath 'contract' only: FMAs in the polynomial, no reassociation, no approximate division
    options = dict(nogil=True, cache=True, fastmath={"contract"}, error_model="numpy", boundscheck=False)

    @njit(inline="always", **options)
    def log_normal(s):
        """log(s) for a positive normal float32 s = 2^e m, m in [sqrt(1/2), sqrt(2))."""
        shifted = bits_of(s) - offset
        e = _F(shifted >> 23)
        x = float_of((shifted & 0x007FFFFF) + offset) - one
        z = x * x
        poly = ((((((((p0 * x + p1) * x + p2) * x + p3) * x + p4) * x + p5) * x + p6) * x + p7) * x + p8)
        return x + (x * z * poly + e * ln2_lo - half * z) + e * ln2_hi

    @njit(**options)
    def with_log(tile, a, b, eps):
        for i in range(tile.shape[0]):
            row, a_i = tile[i], a[i]
            for j in range(row.shape[0]):
                s = a_i + b[j]
                row[j] = row[j] / (eps + s) - log_normal(s)

    @njit(**options)
    def attention_only(tile, a, b, eps):
        for i in range(tile.shape[0]):
            row, a_i = tile[i], a[i]
            for j in range(row.shape[0]):
                row[j] = row[j] / (eps + (a_i + b[j]))

    return with_log, attention_only


def kernels():
    """The two compiled tails, or None when numba is not installed."""
    global _kernels
    if _kernels is None:
        _kernels = _build()
    return _kernels or None


def usable(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether the compiled tail applies to these sigma_sq vectors: float32, numba present, and every
    ``a_i + b_j`` a positive normal finite float32 (float addition is monotonic, so the extremes decide)."""
    if a.dtype != np.float32 or b.dtype != np.float32 or a.size == 0 or b.size == 0:
        return False
    low, high = a.min() + b.min(), a.max() + b.max()
    return bool(low >= _TINY and np.isfinite(high)) and kernels() is not None


def apply(tile: np.ndarray, a: np.ndarray, b: np.ndarray, eps: float, attention_only: bool = False) -> None:
    """In place: ``tile[i, j] = tile[i, j] / (eps + a[i] + b[j]) - log(a[i] + b[j])`` (no log term with
    ``attention_only``). ``tile`` is a C-contiguous float32 block; call only when ``usable(a, b)``."""
    if tile.shape != (a.shape[0], b.shape[0]) or not tile.flags.c_contiguous or tile.dtype != np.float32:
        # the compiled loops do not check bounds, so a mismatch must never reach them
        raise ValueError(f"FastMLS tail: tile {tile.dtype}{tile.shape} (C-contiguous: {tile.flags.c_contiguous}) "
                         f"does not match sigma_sq vectors of {a.shape[0]} and {b.shape[0]} entries")
    with_log, attention = kernels()
    (attention if attention_only else with_log)(tile, a, b, _F(eps))
