"""Command-line entry points report expected failures as one clear line and a non-zero exit, no traceback."""
from __future__ import annotations

import contextlib
import sys


@contextlib.contextmanager
def fail_cleanly(program: str, exit_code: int = 2):
    """Turn the package's own input errors (ValueError subclasses, missing files) into ``program: error: ...``."""
    try:
        yield
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"{program}: error: {exc}", file=sys.stderr, flush=True)
        sys.exit(exit_code)
