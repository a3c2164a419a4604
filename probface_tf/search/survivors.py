"""The entries of a cosine tile that can still enter a probe's FastMLS top k: one pass, compiled.

An exact FastMLS scan computes the cosines of a probe chunk against a gallery block with one matmul, as a cosine
search would; everything else it does per entry must cost far less than that matmul. Per entry the test is

* ``cos >= cut[i]``: the cosine below which the bound (``bound.cosine_cut``) rules the entry out whatever its
  sigma_sq; this compare-and-branch on 16 lanes is all that almost every entry costs;
* for the rare vectors with a lane above the cut, FastMLS in float32 (the ``fastmls_tail`` lines) against
  ``floor[i]``, the probe's current k-th exact score lowered by the float32 error.

Surviving entries come out as flat indices ``i * cols + j`` in row-major order; the caller scores them exactly.
The loop is LLVM IR compiled by llvmlite on first use; without llvmlite (or on a compile failure) NumPy runs the
same test. Both paths only decide which entries get an exact score, so their small float differences never
change a search result.
"""
from __future__ import annotations

import concurrent.futures
import ctypes
import functools
import os
import threading

import numpy as np

from probface_tf.fastmls_tail import tail_lines
from probface_tf.jit import LANES, VEC, VECTOR_ATTRIBUTES, compile_or_warn, float_splat
from probface_tf.mls import MLS_EPSILON

_SIGNATURE = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                              ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                              ctypes.c_int64, ctypes.c_float)


def _splat(name: str, scalar: str) -> list[str]:
    return [f"%{name}.0 = insertelement {VEC} poison, float {scalar}, i32 0",
            f"%{name} = shufflevector {VEC} %{name}.0, {VEC} poison, <{LANES} x i32> zeroinitializer"]


def module_ir() -> str:
    """``i64 topk_survivors(float* cos, i64 rows, i64 cols, i64 stride, float* s1, float* s2, float* cut,
    float* floor, i64* out, i64 cap, float eps)``: the number of survivors written to ``out``, or -1 once more
    than ``cap`` survive (the caller then scores the tile whole). The last partial vector of a row is read
    through a stack copy (sigma_sq padded with 1, so its unused lanes stay finite) and masked by lane."""
    v = VEC
    score, result = tail_lines("f.", "%t", "%a.v", "%b", True)
    score = "\n  ".join(score)
    lane_ids = "<" + ", ".join(f"i32 {k}" for k in range(LANES)) + ">"
    all_lanes = "<" + ", ".join(["i1 true"] * LANES) + ">"
    eps_splat = "\n  ".join(_splat("eps.v", "%eps"))
    row_splats = "\n  ".join(_splat("a.v", "%a.i") + _splat("cut.v", "%cut.i") + _splat("floor.v", "%floor.i"))
    return f"""
define i64 @topk_survivors(ptr noalias %cos, i64 %rows, i64 %cols, i64 %stride, ptr noalias %s1.ptr,
                           ptr noalias %s2.ptr, ptr noalias %cut.ptr, ptr noalias %floor.ptr, ptr noalias %out,
                           i64 %cap, float %eps) #0 {{
entry:
  %count = alloca i64, align 8
  store i64 0, ptr %count, align 8
  %c.buf = alloca {v}, align 64
  %s.buf = alloca {v}, align 64
  {eps_splat}
  %left = and i64 %cols, {LANES - 1}
  %left.bytes = shl i64 %left, 2
  %left.32 = trunc i64 %left to i32
  %left.0 = insertelement <{LANES} x i32> poison, i32 %left.32, i32 0
  %left.v = shufflevector <{LANES} x i32> %left.0, <{LANES} x i32> poison, <{LANES} x i32> zeroinitializer
  %pad.lanes = icmp ult <{LANES} x i32> {lane_ids}, %left.v
  %any.rows = icmp sgt i64 %rows, 0
  %any.cols = icmp sgt i64 %cols, 0
  %any = and i1 %any.rows, %any.cols
  br i1 %any, label %row, label %done
row:
  %i = phi i64 [0, %entry], [%i.next, %row.end]
  %a.at = getelementptr float, ptr %s1.ptr, i64 %i
  %a.i = load float, ptr %a.at, align 4
  %cut.at = getelementptr float, ptr %cut.ptr, i64 %i
  %cut.i = load float, ptr %cut.at, align 4
  %floor.at = getelementptr float, ptr %floor.ptr, i64 %i
  %floor.i = load float, ptr %floor.at, align 4
  {row_splats}
  %row.offset = mul i64 %i, %stride
  %row.ptr = getelementptr float, ptr %cos, i64 %row.offset
  %flat.row = mul i64 %i, %cols
  br label %col
col:
  %j = phi i64 [0, %row], [%j.next, %col.next]
  %j.end = add i64 %j, {LANES}
  %partial = icmp sgt i64 %j.end, %cols
  br i1 %partial, label %pad, label %direct
direct:
  %c.direct = getelementptr float, ptr %row.ptr, i64 %j
  %s.direct = getelementptr float, ptr %s2.ptr, i64 %j
  br label %vector
pad:
  store {v} {float_splat(1.0)}, ptr %s.buf, align 64
  store {v} zeroinitializer, ptr %c.buf, align 64
  %c.rest = getelementptr float, ptr %row.ptr, i64 %j
  %s.rest = getelementptr float, ptr %s2.ptr, i64 %j
  call void @llvm.memcpy.p0.p0.i64(ptr align 64 %c.buf, ptr align 4 %c.rest, i64 %left.bytes, i1 false)
  call void @llvm.memcpy.p0.p0.i64(ptr align 64 %s.buf, ptr align 4 %s.rest, i64 %left.bytes, i1 false)
  br label %vector
vector:
  %c.ptr = phi ptr [%c.direct, %direct], [%c.buf, %pad]
  %s.ptr = phi ptr [%s.direct, %direct], [%s.buf, %pad]
  %lanes = phi <{LANES} x i1> [{all_lanes}, %direct], [%pad.lanes, %pad]
  %c = load {v}, ptr %c.ptr, align 4
  %above = fcmp oge {v} %c, %cut.v
  %pass = and <{LANES} x i1> %above, %lanes
  %pass.bits = bitcast <{LANES} x i1> %pass to i{LANES}
  %any.pass = icmp ne i{LANES} %pass.bits, 0
  br i1 %any.pass, label %score, label %col.next
score:
  %b = load {v}, ptr %s.ptr, align 4
  %c.2 = fmul {v} %c, {float_splat(2.0)}
  %t = fsub {v} %c.2, {float_splat(2.0)}
  {score}
  %good = fcmp oge {v} {result}, %floor.v
  %keep = and <{LANES} x i1> %pass, %good
  %keep.bits = bitcast <{LANES} x i1> %keep to i{LANES}
  %keep.32 = zext i{LANES} %keep.bits to i32
  %flat.j = add i64 %flat.row, %j
  br label %emit
emit:
  %m = phi i32 [%keep.32, %score], [%m.next, %store]
  %emptied = icmp eq i32 %m, 0
  br i1 %emptied, label %col.next, label %room
room:
  %n = load i64, ptr %count, align 8
  %full = icmp sge i64 %n, %cap
  br i1 %full, label %overflow, label %store
store:
  %lane = call i32 @llvm.cttz.i32(i32 %m, i1 true)
  %lane.64 = zext i32 %lane to i64
  %index = add i64 %flat.j, %lane.64
  %slot = getelementptr i64, ptr %out, i64 %n
  store i64 %index, ptr %slot, align 8
  %n.next = add i64 %n, 1
  store i64 %n.next, ptr %count, align 8
  %m.less = sub i32 %m, 1
  %m.next = and i32 %m, %m.less
  br label %emit
col.next:
  %j.next = add i64 %j, {LANES}
  %more.cols = icmp slt i64 %j.next, %cols
  br i1 %more.cols, label %col, label %row.end
row.end:
  %i.next = add i64 %i, 1
  %more.rows = icmp slt i64 %i.next, %rows
  br i1 %more.rows, label %row, label %done
overflow:
  ret i64 -1
done:
  %total = load i64, ptr %count, align 8
  ret i64 %total
}}
declare void @llvm.memcpy.p0.p0.i64(ptr, ptr, i64, i1)
declare i32 @llvm.cttz.i32(i32, i1)
""" + VECTOR_ATTRIBUTES


_compiled = None  # (engine, function) once compiled; False when it cannot be
_lock = threading.Lock()
_pool = None
MIN_ROWS_PER_THREAD = 32  # smaller tiles are not worth a thread hand-off


def kernel():
    """The compiled pass (compiled on first use), or None: NumPy then runs the test."""
    global _compiled
    with _lock:
        if _compiled is None:
            _compiled = compile_or_warn(module_ir(), {"topk_survivors": _SIGNATURE}, "survivor scan",
                                        "the exact search uses NumPy") or False
    return _compiled[1] if _compiled else None


def _numpy_survivors(cos, s1, s2, cut, floor, cap):
    above = cos >= cut[:, None]
    # most tiles hold a handful of survivors: find them through the 8-byte words of the mask first
    padded = np.zeros(-(-above.size // 8) * 8, bool)
    padded[:above.size] = above.reshape(-1)
    words = np.flatnonzero(padded.view(np.uint64))
    flat = (words[:, None] * 8 + np.arange(8)).reshape(-1)
    flat = flat[padded[flat]]
    rows, cols = np.divmod(flat, cos.shape[1])
    mutual = s1[rows] + s2[cols]
    score = 2 * (cos[rows, cols] - 1) / (np.float32(MLS_EPSILON) + mutual) - np.log(mutual)
    flat = flat[score >= floor[rows]]
    return None if flat.size > cap else flat


def survivors(cos: np.ndarray, s1: np.ndarray, s2: np.ndarray, cut: np.ndarray, floor: np.ndarray,
              cap: int) -> np.ndarray | None:
    """Flat indices (row-major, int64) of the entries of ``cos [R, C]`` with ``cos >= cut[i]`` and a float32
    FastMLS ``>= floor[i]``, or None when more than ``cap`` survive. ``cos`` is float32 with contiguous rows
    (a slice of a larger buffer is fine); ``s1 [R]``, ``s2 [C]``, ``cut [R]``, ``floor [R]`` contiguous float32
    with ``fastmls_tail.normal_sums(s1, s2)``. The rows are split over the CPU's cores."""
    vectors = (s1, s2, cut, floor)
    rows_ok = cos.ndim == 2 and cos.dtype == np.float32 and cos.strides[1] == 4 and cos.strides[0] % 4 == 0 \
        and cos.strides[0] >= 0
    if not rows_ok or any(x.dtype != np.float32 or x.ndim != 1 or not x.flags.c_contiguous for x in vectors) \
            or (len(s1), len(s2), len(cut), len(floor)) != (cos.shape[0], cos.shape[1]) + (cos.shape[0],) * 2:
        # the compiled loop does not check bounds, so a mismatch must never reach it
        raise ValueError(f"survivor scan: tile {cos.dtype}{cos.shape} (strides {cos.strides}) does not match "
                         f"its vectors {[f'{x.dtype}{x.shape}' for x in vectors]}")
    compiled = kernel()
    if compiled is None:
        return _numpy_survivors(cos, s1, s2, cut, floor, cap)
    parts = np.array_split(np.arange(cos.shape[0]), min(_threads(), max(1, cos.shape[0] // MIN_ROWS_PER_THREAD)))
    bounds = [(int(p[0]), int(p[-1]) + 1) for p in parts if p.size]

    def scan(bound):  # rows [a, b): the compiled call releases the GIL, so the parts run on separate cores
        a, b = bound
        out = np.empty(max(0, int(cap)), np.int64)
        found = compiled(cos[a:].ctypes.data, b - a, cos.shape[1], cos.strides[0] // 4, s1[a:].ctypes.data,
                         s2.ctypes.data, cut[a:].ctypes.data, floor[a:].ctypes.data, out.ctypes.data, int(cap),
                         MLS_EPSILON)
        return None if found < 0 else out[:found] + a * cos.shape[1]

    results = list(_executor().map(scan, bounds)) if len(bounds) > 1 else [scan(bounds[0])] if bounds else []
    if any(r is None for r in results):
        return None
    flat = np.concatenate(results) if results else np.zeros(0, np.int64)
    return None if flat.size > cap else flat


@functools.lru_cache(maxsize=None)
def _threads() -> int:  # read once: it is asked for every tile
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()))


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(_threads(), thread_name_prefix="probface-survivors")
    return _pool
