"""Compiled per-entry tail of the all-pairs FastMLS matrix.

One matmul leaves ``2(cos - 1)`` in every entry of a tile; FastMLS then still needs, per entry,
``tile / (1e-10 + s_i + s_j) - log(s_i + s_j)``. As NumPy ufuncs that is four passes over the tile (outer sum,
divide, log, subtract). Here it is one pass of 16-lane vector code, written as LLVM IR and compiled for this CPU
by llvmlite when first needed (AVX-512 runs it as one register per step, AVX2 as two, other targets as LLVM
legalises it). The float32 log is taken from the exponent bits plus a degree-8 polynomial in the mantissa (the
coefficients of Cephes' ``logf``) and stays within one ulp of the exact log on normal floats (NumPy's float32
log: ~3 ulp).

llvmlite is optional (it comes with the ``cpu`` / ``gpu`` extras). ``usable`` says False whenever the compiled
pass cannot be used (no llvmlite, not float32, or an ``s_i + s_j`` outside the positive normal float32 range,
where the bit decomposition would not hold); the caller then runs the NumPy passes, which give the same numbers
to within a few ulp.
"""
from __future__ import annotations

import ctypes
import threading

import numpy as np

from probface_tf.jit import IVEC, LANES, VEC, VECTOR_ATTRIBUTES, compile_or_warn, float_splat, int_splat

# Cephes logf: log(1 + x) = x - x^2/2 + x^3 P(x) for x in [sqrt(1/2) - 1, sqrt(2) - 1]
_LOG_POLY = (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1,
             -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1)
_LN2_HI, _LN2_LO = 0.693359375, -2.12194440e-4  # ln 2 split so that e * _LN2_HI is exact
_SQRT_HALF_BITS = 0x3F3504F3  # float32 bits of sqrt(1/2): mantissas are mapped into [sqrt(1/2), sqrt(2))
_TINY = np.finfo(np.float32).tiny

_SIGNATURE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                              ctypes.c_void_p, ctypes.c_void_p, ctypes.c_float)  # ctypes calls release the GIL


# --------------------------------------------------------------------------------------------------------------
# LLVM IR


def tail_lines(prefix: str, tile: str, a: str, b: str, with_log: bool) -> tuple[list[str], str]:
    """IR computing the tail of one vector of entries, ``tile / (%eps.v + a + b) - log(a + b)`` (``%eps.v`` is
    the caller's splat of the epsilon); returns the lines and the name of the result."""
    def n(name):
        return f"%{prefix}{name}"

    v, iv, f = VEC, IVEC, float_splat
    lines = [f"{n('s')} = fadd {v} {a}, {b}",
             f"{n('den')} = fadd {v} %eps.v, {n('s')}",
             f"{n('q')} = fdiv {v} {tile}, {n('den')}"]
    if not with_log:
        return lines, n("q")
    lines += [  # s = 2^e m with m in [sqrt(1/2), sqrt(2)): shift the bits so the exponent field rounds there
        f"{n('bits')} = bitcast {v} {n('s')} to {iv}",
        f"{n('shifted')} = sub {iv} {n('bits')}, {int_splat(_SQRT_HALF_BITS)}",
        f"{n('e.int')} = ashr {iv} {n('shifted')}, {int_splat(23)}",
        f"{n('e')} = sitofp {iv} {n('e.int')} to {v}",
        f"{n('m.low')} = and {iv} {n('shifted')}, {int_splat(0x7FFFFF)}",
        f"{n('m.bits')} = add {iv} {n('m.low')}, {int_splat(_SQRT_HALF_BITS)}",
        f"{n('m')} = bitcast {iv} {n('m.bits')} to {v}",
        f"{n('x')} = fsub {v} {n('m')}, {f(1.0)}",
        f"{n('z')} = fmul {v} {n('x')}, {n('x')}",
    ]
    poly = f(_LOG_POLY[0])
    for k, coefficient in enumerate(_LOG_POLY[1:]):  # Horner; 'contract' lets each step become one FMA
        lines += [f"{n(f'p{k}.mul')} = fmul contract {v} {poly}, {n('x')}",
                  f"{n(f'p{k}')} = fadd contract {v} {n(f'p{k}.mul')}, {f(coefficient)}"]
        poly = n(f"p{k}")
    lines += [
        f"{n('x3')} = fmul {v} {n('x')}, {n('z')}",
        f"{n('y.poly')} = fmul contract {v} {n('x3')}, {poly}",
        f"{n('e.lo')} = fmul contract {v} {n('e')}, {f(_LN2_LO)}",
        f"{n('y.lo')} = fadd contract {v} {n('y.poly')}, {n('e.lo')}",
        f"{n('half.z')} = fmul contract {v} {n('z')}, {f(0.5)}",
        f"{n('y')} = fsub contract {v} {n('y.lo')}, {n('half.z')}",
        f"{n('x.y')} = fadd {v} {n('x')}, {n('y')}",
        f"{n('e.hi')} = fmul contract {v} {n('e')}, {f(_LN2_HI)}",
        f"{n('log')} = fadd contract {v} {n('x.y')}, {n('e.hi')}",
        f"{n('r')} = fsub {v} {n('q')}, {n('log')}",
    ]
    return lines, n("r")


def _function_ir(name: str, with_log: bool) -> str:
    """``void name(float* tile, i64 rows, i64 cols, i64 row_stride, float* a, float* b, float eps)``: every row,
    16 columns at a time, the last partial vector through a padded stack copy (b padded with 1, so its unused
    lanes stay finite)."""
    v = VEC
    full, full_result = tail_lines("f.", "%t", "%a.v", "%b", with_log)
    part, part_result = tail_lines("p.", "%t.pad", "%a.v", "%b.pad", with_log)
    full, part = "\n  ".join(full), "\n  ".join(part)
    return f"""
define void @{name}(ptr noalias %tile, i64 %rows, i64 %cols, i64 %stride, ptr noalias %a.ptr,
                    ptr noalias %b.ptr, float %eps) #0 {{
entry:
  %t.buf = alloca {v}, align 64
  %b.buf = alloca {v}, align 64
  %eps.0 = insertelement {v} poison, float %eps, i32 0
  %eps.v = shufflevector {v} %eps.0, {v} poison, <{LANES} x i32> zeroinitializer
  %cols.full = and i64 %cols, -{LANES}
  %cols.left = sub i64 %cols, %cols.full
  %left.bytes = shl i64 %cols.left, 2
  %any.rows = icmp sgt i64 %rows, 0
  br i1 %any.rows, label %row, label %done
row:
  %i = phi i64 [0, %entry], [%i.next, %row.end]
  %a.at = getelementptr float, ptr %a.ptr, i64 %i
  %a.i = load float, ptr %a.at, align 4
  %a.0 = insertelement {v} poison, float %a.i, i32 0
  %a.v = shufflevector {v} %a.0, {v} poison, <{LANES} x i32> zeroinitializer
  %row.offset = mul i64 %i, %stride
  %row.ptr = getelementptr float, ptr %tile, i64 %row.offset
  %any.full = icmp sgt i64 %cols.full, 0
  br i1 %any.full, label %col, label %tail.check
col:
  %j = phi i64 [0, %row], [%j.next, %col]
  %b.at = getelementptr float, ptr %b.ptr, i64 %j
  %t.at = getelementptr float, ptr %row.ptr, i64 %j
  %b = load {v}, ptr %b.at, align 4
  %t = load {v}, ptr %t.at, align 4
  {full}
  store {v} {full_result}, ptr %t.at, align 4
  %j.next = add i64 %j, {LANES}
  %more.cols = icmp slt i64 %j.next, %cols.full
  br i1 %more.cols, label %col, label %tail.check
tail.check:
  %any.left = icmp sgt i64 %cols.left, 0
  br i1 %any.left, label %tail, label %row.end
tail:
  store {v} {float_splat(1.0)}, ptr %b.buf, align 64
  store {v} zeroinitializer, ptr %t.buf, align 64
  %b.rest = getelementptr float, ptr %b.ptr, i64 %cols.full
  %t.rest = getelementptr float, ptr %row.ptr, i64 %cols.full
  call void @llvm.memcpy.p0.p0.i64(ptr align 64 %b.buf, ptr align 4 %b.rest, i64 %left.bytes, i1 false)
  call void @llvm.memcpy.p0.p0.i64(ptr align 64 %t.buf, ptr align 4 %t.rest, i64 %left.bytes, i1 false)
  %b.pad = load {v}, ptr %b.buf, align 64
  %t.pad = load {v}, ptr %t.buf, align 64
  {part}
  store {v} {part_result}, ptr %t.buf, align 64
  call void @llvm.memcpy.p0.p0.i64(ptr align 4 %t.rest, ptr align 64 %t.buf, i64 %left.bytes, i1 false)
  br label %row.end
row.end:
  %i.next = add i64 %i, 1
  %more.rows = icmp slt i64 %i.next, %rows
  br i1 %more.rows, label %row, label %done
done:
  ret void
}}
"""


def module_ir() -> str:
    """The IR of both passes: ``fastmls_tail`` and ``fastmls_attention`` (no log term)."""
    return (_function_ir("fastmls_tail", True) + _function_ir("fastmls_attention", False)
            + "declare void @llvm.memcpy.p0.p0.i64(ptr, ptr, i64, i1)\n" + VECTOR_ATTRIBUTES)


# --------------------------------------------------------------------------------------------------------------
# compilation and calls

_compiled = None  # (engine, with_log, attention_only) once compiled; False when llvmlite is missing
_lock = threading.Lock()


def _compile():
    signatures = {"fastmls_tail": _SIGNATURE, "fastmls_attention": _SIGNATURE}
    return compile_or_warn(module_ir(), signatures, "FastMLS tail", "all-pairs FastMLS uses NumPy") or False


def kernels():
    """``(engine, with_log, attention_only)`` compiled on first use (~0.1 s), or None without llvmlite."""
    global _compiled
    with _lock:
        if _compiled is None:
            _compiled = _compile()
    return _compiled or None


def normal_sums(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether every float32 ``a_i + b_j`` is a positive normal finite float32, where the exponent-bit log and
    float32 FastMLS hold (float addition is monotonic, so the extremes decide)."""
    if a.size == 0 or b.size == 0:
        return False
    low = np.float32(a.min()) + np.float32(b.min())
    high = np.float32(a.max()) + np.float32(b.max())
    return bool(low >= _TINY and np.isfinite(high))


def usable(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether the compiled tail applies to these sigma_sq vectors: float32, llvmlite present, and
    ``normal_sums``."""
    if a.dtype != np.float32 or b.dtype != np.float32:
        return False
    return normal_sums(a, b) and kernels() is not None


def apply(tile: np.ndarray, a: np.ndarray, b: np.ndarray, eps: float, attention_only: bool = False) -> None:
    """In place: ``tile[i, j] = tile[i, j] / (eps + a[i] + b[j]) - log(a[i] + b[j])`` (no log term with
    ``attention_only``). ``tile`` is a float32 block whose rows are contiguous (a slice of a larger matrix is
    fine); ``a`` and ``b`` are contiguous float32 vectors. Call only when ``usable(a, b)``."""
    rows_ok = tile.ndim == 2 and tile.strides[1] == 4 and tile.strides[0] % 4 == 0 and tile.strides[0] >= 0
    vectors_ok = all(v.ndim == 1 and v.dtype == np.float32 and v.flags.c_contiguous for v in (a, b))
    if tile.dtype != np.float32 or not rows_ok or not vectors_ok or tile.shape != (a.shape[0], b.shape[0]):
        # the compiled loops do not check bounds, so a mismatch must never reach them
        raise ValueError(f"FastMLS tail: tile {tile.dtype}{tile.shape} with strides {tile.strides} does not match "
                         f"sigma_sq vectors {a.dtype}{a.shape} and {b.dtype}{b.shape} (float32, contiguous rows)")
    if not tile.flags.writeable:
        raise ValueError("FastMLS tail: the tile is read-only")
    _, with_log, attention = kernels()
    (attention if attention_only else with_log)(tile.ctypes.data, tile.shape[0], tile.shape[1],
                                                tile.strides[0] // 4, a.ctypes.data, b.ctypes.data, eps)
