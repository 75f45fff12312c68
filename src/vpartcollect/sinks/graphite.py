"""Graphite plaintext over TCP that never blocks the supervisor and loses nothing it can keep.

Lines wait in a bounded queue and leave through a non-blocking socket driven
by the supervisor's selector. A carbon that is down, slow, or never reads only
fills the queue; when it is full the oldest lines are dropped and counted.
Plaintext has no acknowledgements, so the lines sent in the last
``resend_seconds`` before a connection died are sent again after reconnecting:
carbon keeps one value per path and timestamp, so a repeat is harmless.
A host name is looked up off the loop (resolve.py) at each connection attempt,
and every address it has is tried in turn, alternating IPv6 and IPv4.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import selectors
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence

from vpartcollect.backoff import backoff
from vpartcollect.config import Endpoint
from vpartcollect.metrics import Metric, format_line
from vpartcollect.resolve import Address, Lookup, numeric

log = logging.getLogger(__name__)

BACKOFF_MIN = 0.5
BACKOFF_MAX = 10.0  # carbon back from a restart is found within seconds
_WRITE_BATCH = 64 * 1024
# A connect that has not completed by then is given up for the next address (another
# family often works at once); the last address gets longer before it counts as down.
ATTEMPT_SECONDS = 2.0
LAST_ATTEMPT_SECONDS = 10.0


class GraphiteSink:
    """One destination, with its own queue and connection."""

    def __init__(self, endpoint: Endpoint, max_lines: int = 100_000,
                 resend_seconds: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.endpoint = endpoint
        self.max_lines = max_lines
        self.resend_seconds = resend_seconds
        self.clock = clock
        self.queue: deque[bytes] = deque()
        self.inflight: deque[bytes] = deque()  # lines in ``out``, not yet fully written
        self.out = b""
        self.recent: deque[tuple[float, bytes]] = deque()  # sent lines kept for a resend
        self.sock: socket.socket | None = None
        self.connecting = False
        self.lookup: Lookup | None = None  # a name lookup in progress
        self.addresses: list[Address] = []  # addresses still to try in this attempt
        self.attempt_until = 0.0  # when the connect in progress is given up
        self.next_attempt = 0.0
        self.failures = 0  # connection attempts failed in a row
        self.dropped = 0
        self._episode_dropped = 0
        self._down_logged = False
        self._lost_at: float | None = None  # when the last good connection died
        self.on_close: Callable[[], None] = lambda: None  # the selector lets go of us

    def __str__(self) -> str:
        return f"graphite {self.endpoint}"

    # -- what the supervisor sees ----------------------------------------
    @property
    def buffered(self) -> int:
        """Lines not yet handed to the kernel."""
        return len(self.queue) + len(self.inflight)

    def reconfigure(self, max_lines: int, resend_seconds: float) -> None:
        """New bounds (SIGHUP): the queue and the connection stay; a smaller bound drops
        (and counts) the oldest lines over it."""
        self.max_lines, self.resend_seconds = max_lines, resend_seconds
        self._trim()

    def write(self, metrics: Sequence[Metric]) -> None:
        """Queue lines; drop (and count) the oldest when over the bound."""
        self.queue.extend(format_line(m.path, m.value, m.ts).encode() for m in metrics)
        self._trim()

    def _trim(self) -> None:
        excess = len(self.queue) - self.max_lines
        if excess > 0:
            for _ in range(excess):
                self.queue.popleft()
            self.dropped += excess
            if not self._episode_dropped:
                log.warning("%s: buffer full (%d lines): dropping the oldest", self,
                            self.max_lines)
            self._episode_dropped += excess

    def interest(self) -> tuple[socket.socket | int, int] | None:
        """The socket (or name lookup pipe) and events to wait for, or None while idle."""
        if self.lookup is not None:
            return self.lookup.fd, selectors.EVENT_READ
        if self.sock is None:
            return None
        if self.connecting:
            return self.sock, selectors.EVENT_WRITE
        events = selectors.EVENT_READ
        if self.out or self.queue:
            events |= selectors.EVENT_WRITE
        return self.sock, events

    def next_wakeup(self) -> float | None:
        """Monotonic time this sink next needs the loop: a reconnect, or a time limit."""
        if self.lookup is not None:
            return self.lookup.deadline
        if self.sock is None:
            return self.next_attempt
        return self.attempt_until if self.connecting else None

    def poll(self) -> None:
        """Start a connection attempt when disconnected and the backoff has passed; give
        up a name lookup or a connect that ran out of time."""
        now = self.clock()
        if self.lookup is not None:
            if self.lookup.expired():
                self.close()
                self._fail(TimeoutError(f"name lookup of {self.endpoint.host} timed out"))
        elif self.sock is None:
            if now >= self.next_attempt:
                self._connect()
        elif self.connecting and now >= self.attempt_until:
            self._next_address(TimeoutError("connect timed out"))

    def on_ready(self, mask: int) -> None:
        """Handle readiness of our socket: finish connecting, notice a close, send."""
        if self.lookup is not None:
            self._looked_up()
            return
        if self.sock is None:
            return
        if self.connecting:
            err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._next_address(OSError(err, os.strerror(err)))
                return
            self._connected()
        if mask & selectors.EVENT_READ and not self._drain_input():
            return
        if mask & selectors.EVENT_WRITE:
            self._send()

    def finish(self, deadline: float) -> bool:
        """Half-close and wait (until monotonic ``deadline``) for carbon to close its side.

        Carbon reads a connection in order, so its end of file means it has taken
        every line we sent: the nearest thing to an acknowledgement plaintext has.
        """
        if self.sock is None or self.connecting or self.buffered or self.lookup is not None:
            return False
        try:
            self.sock.shutdown(socket.SHUT_WR)
            while (left := deadline - self.clock()) > 0:
                ready, _, _ = select.select([self.sock], [], [], left)
                if ready and not self.sock.recv(4096):
                    return True
        except OSError:
            pass
        return False

    def close(self) -> None:
        """Drop the connection (what is queued stays queued). The selector lets go of it
        first: a descriptor closed while registered, then reused by the next socket or
        pipe, would make the selector refuse that one."""
        self.on_close()
        if self.lookup is not None:
            self.lookup.close()
            self.lookup = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    # -- internals -------------------------------------------------------
    def _connect(self) -> None:
        addresses = numeric(self.endpoint.host, self.endpoint.port)
        if addresses is not None:
            self.addresses = addresses
            self._next_address(None)
            return
        try:
            self.lookup = Lookup(self.endpoint.host, self.endpoint.port, self.clock)
        except OSError as exc:  # no fork: out of processes or memory
            self._fail(exc)

    def _looked_up(self) -> None:
        assert self.lookup is not None
        outcome = self.lookup.read()
        if outcome is None:
            return
        self.lookup = None
        self.addresses, error = outcome
        self._next_address(OSError(error) if error else None)

    def _next_address(self, error: OSError | None) -> None:
        """Connect to the next address not yet tried; when none is left, fail with the
        last ``error``."""
        self.close()
        self.connecting = False
        while self.addresses:
            family, addr = self.addresses.pop(0)
            try:
                sock = socket.socket(family, socket.SOCK_STREAM)
            except OSError as exc:
                error = exc
                continue
            sock.setblocking(False)
            err = sock.connect_ex(addr)
            if err not in (0, errno.EINPROGRESS):
                sock.close()
                error = OSError(err, os.strerror(err))
                continue
            self.sock, self.connecting = sock, True
            self.attempt_until = self.clock() + (ATTEMPT_SECONDS if self.addresses
                                                 else LAST_ATTEMPT_SECONDS)
            return
        self._fail(error or OSError("no address to connect to"))

    def _connected(self) -> None:
        self.connecting = False
        self.failures = 0
        if self._down_logged:
            log.warning("%s: connected again", self)
            self._down_logged = False
        # Whatever the dead connection swallowed may be gone: send what went out in the
        # last resend_seconds before it died again, oldest first.
        horizon = (self._lost_at or self.clock()) - self.resend_seconds
        self._lost_at = None
        again = [line for at, line in self.recent if at >= horizon]
        self.recent.clear()
        self.queue.extendleft(reversed(again))
        excess = len(self.queue) - self.max_lines
        if excess > 0:  # never let a resend push out unsent lines beyond the bound
            for _ in range(excess):
                self.queue.popleft()

    def _drain_input(self) -> bool:
        assert self.sock is not None
        try:
            if self.sock.recv(4096):
                return True  # carbon says nothing; ignore whatever it sent
            self._fail(ConnectionResetError("closed by peer"))
        except BlockingIOError:
            return True
        except OSError as exc:
            self._fail(exc)
        return False

    def _send(self) -> None:
        assert self.sock is not None
        now = self.clock()
        while True:
            if not self.out:
                if not self.queue:
                    break
                size = 0
                while self.queue and size < _WRITE_BATCH:
                    line = self.queue.popleft()
                    self.inflight.append(line)
                    size += len(line)
                self.out = b"".join(self.inflight)
            try:
                sent = self.sock.send(self.out)
            except BlockingIOError:
                break
            except OSError as exc:
                self._fail(exc)
                return
            self.out = self.out[sent:]
            self._retire(len(self.out), now)
            if self.out:
                break
        if self._episode_dropped and not self.queue:
            log.warning("%s: buffer drained; %d lines were dropped", self,
                        self._episode_dropped)
            self._episode_dropped = 0
        horizon = now - self.resend_seconds
        while self.recent and self.recent[0][0] < horizon:
            self.recent.popleft()

    def _retire(self, unsent: int, now: float) -> None:
        """Move lines fully written to the kernel from inflight to the resend window."""
        pending = sum(len(line) for line in self.inflight)
        while self.inflight and pending - len(self.inflight[0]) >= unsent:
            line = self.inflight.popleft()
            pending -= len(line)
            if self.resend_seconds > 0:
                self.recent.append((now, line))
        while len(self.recent) > self.max_lines:
            self.recent.popleft()

    def _fail(self, exc: OSError) -> None:
        if self._lost_at is None and not self.connecting:
            self._lost_at = self.clock()
        if not self._down_logged:
            log.warning("%s: %s; buffering and reconnecting with backoff", self,
                        exc.strerror or exc)
            self._down_logged = True
        self.close()
        self.connecting = False
        self.addresses = []
        # Lines cut off mid-write go back first, whole; carbon drops the torn line.
        self.queue.extendleft(reversed(self.inflight))
        self.inflight.clear()
        self.out = b""
        self.next_attempt = self.clock() + backoff(self.failures, BACKOFF_MIN, BACKOFF_MAX)
        self.failures += 1
