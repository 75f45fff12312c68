"""What the supervisor sends down one worker's control pipe, written without ever blocking.

A pipe holds 64 KB; a tick a new worker replays carries a skip list (3,000 domains:
~114 KB). Written blocking, a worker that does not read (stopped, stuck in a call, in
D state) would hold up the supervisor, and with it every other partition and every
output. The descriptor is non-blocking instead: what does not fit waits here and goes
when the selector says the pipe takes more (``interest``/``on_ready``, as a sink's
socket). Bounded by the protocol: the supervisor sends a tick only to an idle worker,
so one frame at most waits; a worker that leaves it unread past a deadline is the
watchdog's (``unread_since``: what waits here, or what the pipe still holds, which a
tick of a few bytes always fits in).
"""

from __future__ import annotations

import fcntl
import logging
import os
import selectors
import struct
import termios
from collections.abc import Callable

from vpartcollect.output.sinks.base import Interest

log = logging.getLogger(__name__)


class Outbox:
    """The supervisor's end of one worker's control pipe."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self._data = b""
        self.sent_since: float | None = None  # monotonic: a frame not all read since
        self.on_close: Callable[[], None] = lambda: None  # before the fd closes

    def __repr__(self) -> str:
        return f"<Outbox fd={self.fd} {len(self._data)} byte(s) waiting>"

    @property
    def waiting(self) -> int:
        """Bytes the worker has not taken yet."""
        return len(self._data)

    def in_pipe(self) -> int:
        """Bytes written to the pipe that the worker has not read (FIONREAD answers on
        either end of a pipe)."""
        try:
            return int(struct.unpack("i", fcntl.ioctl(self.fd, termios.FIONREAD,
                                                       b"\0\0\0\0"))[0])
        except OSError:
            return 0

    def unread_since(self) -> float | None:
        """Since when (monotonic) the worker has left part of what was sent unread: still
        waiting here or in the pipe; None once it has read everything."""
        if self.sent_since is not None and (self.fd < 0 or not (self._data or self.in_pipe())):
            self.sent_since = None
        return self.sent_since

    def send(self, frame: bytes, now: float) -> None:
        """Write ``frame`` now as far as the pipe takes it; the rest waits for ``on_ready``.
        A worker gone (EPIPE) takes nothing: its exit is reaped, its tick put back."""
        if self.unread_since() is None:
            self.sent_since = now
        self._data += frame
        self._flush()

    def interest(self) -> Interest | None:
        """The pipe, for writing, while something waits; else nothing."""
        return (self.fd, selectors.EVENT_WRITE) if self._data else None

    def on_ready(self, mask: int) -> None:
        """The pipe takes more (or, closed earlier in the same select(), nothing)."""
        if self.fd >= 0:
            self._flush()

    def close(self) -> None:
        """Close the pipe (the worker reads EOF once it took what was sent); what still
        waits is dropped."""
        if self.fd >= 0:
            self.on_close()
            os.close(self.fd)
            self.fd, self._data, self.sent_since = -1, b"", None

    def _flush(self) -> None:
        try:
            while self._data:
                self._data = self._data[os.write(self.fd, self._data):]
        except BlockingIOError:
            return
        except OSError as exc:  # EPIPE: it died; reap() puts its tick back
            log.debug("control pipe fd %d: %s", self.fd, exc)
            self._data = b""
