"""glibc's malloc, as this process uses it: fewer arenas, free pages given back, its numbers.

Python objects over 512 bytes (frame payloads, packets), codec buffers and
OpenSSL's state are malloc's. Two of its defaults cost a relay RSS for nothing:

- **An arena per thread.** Each thread that mallocs gets an arena of its own
  (up to 8 per core) whose touched pages stay resident. aiortc starts a
  decoder thread per receiver (4 per pair, idle in passthrough: they block on
  a queue but allocate a lock) and each took about 100 KB that way.
  `limit_arenas(2)`: the event loop's thread keeps the main arena, every
  other thread shares one. They run Python under the GIL anyway, so they
  hardly contend.
- **Free memory kept.** Start-up (imports, the moderation warm-up sample)
  frees megabytes in the middle of the heap that glibc keeps; `trim()` gives
  such free pages back to the kernel.

Both do nothing where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any, Final

# mallopt(3): M_ARENA_MAX.
_M_ARENA_MAX: Final = -8
ARENAS: Final = 2


class _Mallinfo2(ctypes.Structure):
    # glibc >= 2.33 (Debian 12 has 2.36); every field is a size_t.
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _libc() -> Any:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallinfo2.restype = _Mallinfo2
    except (OSError, AttributeError):
        return None  # not glibc, or too old
    return libc


_LIBC: Final = _libc()


def c_heap() -> dict[str, int] | None:
    """glibc's heap: bytes handed out (`in_use`), free but kept (`free`), mmapped blocks.

    Sums every arena (threads that allocate get arenas of their own). Python
    objects over 512 bytes (frame payloads, packet buffers) live here; smaller
    ones live in pymalloc's arenas, which are mmapped and not counted.
    """
    if _LIBC is None:
        return None
    info = _LIBC.mallinfo2()
    return {
        "in_use": int(info.uordblks),
        "free": int(info.fordblks),
        "mmapped": int(info.hblkhd),
        "arena": int(info.arena),
    }


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Let malloc create at most `arenas` arenas from now on; whether it took."""
    if _LIBC is None:
        return False
    return bool(_LIBC.mallopt(_M_ARENA_MAX, arenas))


def trim() -> bool:
    """Give malloc's free pages back to the kernel; whether any were."""
    if _LIBC is None:
        return False
    return bool(_LIBC.malloc_trim(0))
