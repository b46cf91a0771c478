"""Where the sidecar's memory is: SQLite's own allocations (its page caches, mostly) and
the interpreter's objects, so a growing resident size can be told apart from a cache
filling up (``sidecar_sqlite_memory_bytes``, ``sidecar_python_allocated_blocks``)."""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable

_status64: Callable[..., int] | None = None
_looked_up = False
_SQLITE_STATUS_MEMORY_USED = 0


def _lookup() -> None:
    global _status64, _looked_up
    _looked_up = True
    try:
        import _sqlite3  # the SQLite the sqlite3 module uses, with its dependencies

        f = ctypes.PyDLL(_sqlite3.__file__).sqlite3_status64
    except (ImportError, OSError, AttributeError):
        return
    f.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_int64),
                  ctypes.POINTER(ctypes.c_int64), ctypes.c_int]
    f.restype = ctypes.c_int
    _status64 = f


def sqlite_memory_bytes() -> int | None:
    """Bytes SQLite has allocated in this process (every connection), or None where the
    library does not say (memory statistics off, or not reachable)."""
    if not _looked_up:
        _lookup()
    if _status64 is None:
        return None
    current, highest = ctypes.c_int64(), ctypes.c_int64()
    if _status64(_SQLITE_STATUS_MEMORY_USED, ctypes.byref(current), ctypes.byref(highest),
                 0) != 0:
        return None
    return current.value


def python_allocated_blocks() -> int:
    """Memory blocks the interpreter holds (objects and their buffers)."""
    return sys.getallocatedblocks()
