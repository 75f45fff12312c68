"""Being a well-mannered daemon: systemd readiness notes, rate-limited logging, and
handing memory back after a burst."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import NoReturn

from vpartcollect import children
from vpartcollect.proctitle import set_process_name

_PR_SET_PDEATHSIG = 1
REPEAT_WINDOW = 60.0  # seconds an identical log line is held back after it was written
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` with control characters as escapes: a domain name cannot add a line."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def few(names: Sequence[str], most: int = 5) -> str:
    """Names for a log line: the first ``most``, then how many more."""
    shown = ", ".join(names[:most])
    return f"{shown} and {len(names) - most} more" if len(names) > most else shown


class OneLineFormatter(logging.Formatter):
    """Log lines stay one line whatever a name holds (a traceback still follows as is)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record))


class SignalPipe:
    """Signals turned into something a selector loop can wait on.

    The handler only notes the signal (and calls ``urgent``, which must be safe in a
    handler); the loop wakes on the pipe and acts on ``pending()`` outside it.
    """

    def __init__(self, signals: Sequence[int],
                 urgent: Callable[[int], None] = lambda _s: None) -> None:
        self._noted: list[int] = []
        self._urgent = urgent
        self.fd, self._w = os.pipe()
        for fd in (self.fd, self._w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self._w)
        for sig in signals:
            signal.signal(sig, self._handler)

    def _handler(self, signum: int, _frame: object) -> None:
        self._noted.append(signum)
        self._urgent(signum)

    def drain(self) -> None:
        """Empty the pipe (its bytes only wake the loop)."""
        try:
            while os.read(self.fd, 4096):
                pass
        except BlockingIOError:
            pass

    def pending(self) -> list[int]:
        """The signals noted since the last look, oldest first."""
        noted, self._noted = self._noted, []
        return noted

    def close(self) -> None:
        """Stop writing to the pipe on signals."""
        signal.set_wakeup_fd(-1)


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """In a forked child: get ``sig`` when the parent dies, even by SIGKILL, so no child
    outlives the supervisor holding libvirt calls or a lookup (a spooler gets SIGTERM, to
    keep what it holds). Linux only; a no-op where prctl is missing."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _keep_only_fds(keep: set[int]) -> None:
    """In a fresh child: close every inherited descriptor but stdio and ``keep``."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)
    # Workers never write metrics: stdout belongs to the parent.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)


def fork_child(keep: set[int], child: Callable[[], NoReturn], role: str,
               detail: str = "") -> int:
    """Fork; in the child, close every inherited descriptor but stdio and ``keep``, point
    stdout at /dev/null (metrics are the parent's), take the name ``vpc <role>``
    (proctitle.py) and run ``child`` (which never returns); in the parent, return the
    child's pid."""
    # Objects the child inherits stay shared: the child's GC must not touch (and so copy)
    # every page of them.
    gc.freeze()
    pid = os.fork()
    if pid == 0:
        _keep_only_fds(keep)
        children.forget_all()
        set_process_name(role, detail)
        child()
    return pid


def release_memory() -> None:
    """Ask glibc to return freed heap pages to the system (after many domains were
    forgotten); a no-op where there is no malloc_trim."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def sd_notify(state: str) -> bool:
    """Tell systemd (Type=notify) about our state; a no-op outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
        return True
    except OSError:
        return False


class RepeatFilter(logging.Filter):
    """Drop a warning or error identical to one written in the last REPEAT_WINDOW seconds.

    The next time it passes, it says how many copies were held back, so nothing is
    hidden, only folded.
    """

    def __init__(self, window: float = REPEAT_WINDOW) -> None:
        super().__init__()
        self.window = window
        self._seen: dict[tuple[int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.levelno, record.getMessage())
        now = time.monotonic()
        last, held = self._seen.get(key, (0.0, 0))
        if last and now - last < self.window:
            self._seen[key] = (last, held + 1)
            return False
        if len(self._seen) > 1000:
            self._seen.clear()
        self._seen[key] = (now, 0)
        if held:
            record.msg = f"{record.getMessage()} (and {held} more like it in the last " \
                         f"{self.window:.0f} s)"
            record.args = None
        return True


def setup_logging(level: str) -> None:
    """One line per event on stderr, identical warnings folded; stdout stays for metrics."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter("vpartcollect[%(process)d]: %(levelname)s: %(message)s"))
    handler.addFilter(RepeatFilter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
