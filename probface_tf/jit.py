"""LLVM IR compiled for this CPU by llvmlite: the shared machinery of the package's hand-written vector loops.

The loops themselves (``fastmls_tail``, ``search.survivors``) are IR text; this module turns such text into
callable ctypes functions (ctypes calls release the GIL) and spells the vector constants the IR needs. llvmlite
is optional: ``compile_functions`` raises ImportError without it, and RuntimeError when its LLVM cannot read the
IR or has no JIT for this platform; the callers then fall back to NumPy.
"""
from __future__ import annotations

import struct
import warnings

import numpy as np

LANES = 16
VEC, IVEC = f"<{LANES} x float>", f"<{LANES} x i32>"
# without this, CPUs tuned to prefer 256-bit vectors would split every 16-lane operation in two
VECTOR_ATTRIBUTES = 'attributes #0 = { nounwind "min-legal-vector-width"="512" }\n'


def float_splat(value: float) -> str:
    """A 16-lane float constant (LLVM IR spells a float as the hex of the double it widens to)."""
    text = "0x" + struct.pack(">d", float(np.float32(value))).hex().upper()
    return "<" + ", ".join([f"float {text}"] * LANES) + ">"


def int_splat(value: int) -> str:
    return "<" + ", ".join([f"i32 {value}"] * LANES) + ">"


def compile_functions(ir: str, signatures: dict) -> tuple:
    """``(engine, *functions)``: the IR module compiled at -O3 for the host CPU, one ctypes function per
    ``{name: CFUNCTYPE}`` in order. Keep the engine alive as long as the functions: it owns their machine code."""
    import llvmlite.binding as llvm  # optional: ImportError tells the caller to use NumPy

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    module = llvm.parse_assembly(ir)
    module.verify()
    machine = llvm.Target.from_default_triple().create_target_machine(
        cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(), opt=3)
    engine = llvm.create_mcjit_compiler(module, machine)
    engine.finalize_object()
    return (engine, *[signature(engine.get_function_address(name)) for name, signature in signatures.items()])


def compile_or_warn(ir: str, signatures: dict, what: str, fallback: str) -> tuple | None:
    """``compile_functions``, or None for the NumPy fallback: silently without llvmlite, with a RuntimeWarning
    ('<what> not compiled (<error>); <fallback>') when its LLVM cannot read the IR or has no JIT here."""
    try:
        return compile_functions(ir, signatures)
    except ImportError:
        return None
    except RuntimeError as err:
        warnings.warn(f"{what} not compiled ({err}); {fallback}", RuntimeWarning)
        return None
