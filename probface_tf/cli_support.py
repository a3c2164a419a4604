"""Command-line entry points report expected failures as one clear line and a non-zero exit, no traceback.

Expected failures are the package's own input errors (ValueError and its subclasses, RuntimeError), anything
the operating system refuses (OSError: missing file, disk full, permission, a file where a folder belongs) and
TensorFlow's op errors (a truncated or corrupt checkpoint, a failed read). Any other exception is a bug and
keeps its traceback. ``PROBFACE_DEBUG=1`` in the environment shows the traceback of every failure.
"""
from __future__ import annotations

import contextlib
import os
import sys

DEBUG_ENV = "PROBFACE_DEBUG"


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _expected_errors() -> tuple[type, ...]:
    errors = (ValueError, RuntimeError, OSError)
    tf = sys.modules.get("tensorflow")  # only when the program imported it: its op errors cannot occur otherwise
    op_error = getattr(getattr(tf, "errors", None), "OpError", None)
    return errors + ((op_error,) if isinstance(op_error, type) else ())


def error_line(exc: BaseException) -> str:
    """One line naming what failed: OSError with its file, TensorFlow op errors without the C++ context."""
    if isinstance(exc, OSError) and exc.strerror:
        where = " -> ".join(repr(f) for f in (exc.filename, exc.filename2) if f is not None)
        return f"{exc.strerror}: {where}" if where else exc.strerror
    if type(exc).__module__.startswith("tensorflow"):  # op errors append pages of graph context
        lines = str(getattr(exc, "message", exc)).strip().splitlines() or [""]
        return f"{type(exc).__name__}: {lines[0]}"
    return str(exc) or type(exc).__name__


def report_error(program: str, exc: BaseException) -> None:
    # The package's own input errors say all there is to say; system and TensorFlow errors may need the trace.
    hint = "" if isinstance(exc, ValueError) else f" (set {DEBUG_ENV}=1 for the traceback)"
    print(f"{program}: error: {error_line(exc)}{hint}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def fail_cleanly(program: str, exit_code: int = 2):
    """Turn expected failures into ``program: error: ...`` and ``sys.exit(exit_code)``; with ``PROBFACE_DEBUG``
    set they keep their traceback."""
    try:
        yield
    except Exception as exc:
        if debug_enabled() or not isinstance(exc, _expected_errors()):
            raise
        report_error(program, exc)
        sys.exit(exit_code)
