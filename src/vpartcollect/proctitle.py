"""A forked child's name in ``ps``, ``top`` and the journal, without a dependency.

Two names: the kernel's ``comm`` (``ps -o comm``, ``top``, the journal's ``_COMM``;
15 bytes at most), set with ``prctl(PR_SET_NAME)`` through libc; and the command line
``ps -o args`` shows, which the kernel reads from the process's own argv memory
(``/proc/self/stat`` gives where it is). That memory is rewritten in place, only
after checking that it holds exactly what ``/proc/self/cmdline`` shows, never beyond
its end and always ending in NUL (so the kernel never reads on into the environment);
CPython keeps copies of its arguments and never reads it again. Only in a child:
what is shown for the supervisor stays the command that started it.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

log = logging.getLogger(__name__)

PR_SET_NAME = 15
COMM_BYTES = 15  # TASK_COMM_LEN 16, with its NUL
PREFIX = "vpartcollect: "
SHORT = "vpc "


def comm_name(role: str) -> bytes:
    """``vpc <role>``, cut to what the kernel keeps (whole UTF-8 characters)."""
    return (SHORT + role).encode()[:COMM_BYTES].decode(errors="ignore").encode()


def title(role: str, detail: str = "") -> bytes:
    """``vpartcollect: <role> [<detail>]``, printable ASCII only (a name from outside
    cannot put a control character into ``ps``'s output)."""
    text = PREFIX + role + (f" {detail}" if detail else "")
    return "".join(c if " " <= c <= "~" else "?" for c in text).encode()


def _libc() -> ctypes.CDLL:
    # The process's own symbols, libc's among them (ctypes.util.find_library would run
    # ldconfig: a grandchild, and its SIGCHLD, in a child just forked).
    return ctypes.CDLL(None, use_errno=True)


def set_comm(role: str) -> bool:
    """Set this thread's (the process's main thread's) comm; False where it cannot."""
    try:
        return int(_libc().prctl(PR_SET_NAME, ctypes.c_char_p(comm_name(role)), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def argv_area() -> tuple[int, int] | None:
    """(address, length) of this process's argv strings, when they are exactly what
    /proc/self/cmdline shows (else None: nothing is written)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (fields 48, 49)
        shown = Path("/proc/self/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return None
    if not 0 < start < end or end - start != len(shown) or len(shown) < 2:
        return None
    if ctypes.string_at(start, end - start) != shown:
        return None
    return start, end - start


def set_args(text: bytes) -> bool:
    """Show ``text`` as this process's command line (cut to the space argv had)."""
    area = argv_area()
    if area is None:
        return False
    start, length = area
    data = text[: length - 1]
    ctypes.memset(start, 0, length)
    ctypes.memmove(start, data, len(data))
    return True


def set_process_name(role: str, detail: str = "") -> None:
    """Name this (forked) process ``vpc <role>`` and ``vpartcollect: <role> <detail>``."""
    if not set_comm(role):
        log.debug("cannot set the process name %r", role)
    if not set_args(title(role, detail)):
        log.debug("cannot set the process title of %r", role)
