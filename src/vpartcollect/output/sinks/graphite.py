"""Graphite plaintext over TCP that never blocks the supervisor and loses nothing it can keep.

Lines wait in a bounded queue and leave through a non-blocking connection
(connection.py) driven by the supervisor's selector. A carbon that is down,
slow, or never reads only fills the queue; when it is full the oldest lines
are dropped and counted (or, with a spool, handed to it: spooler.py).
Plaintext has no acknowledgements, so the lines sent in the last
``resend_seconds`` before a connection died are sent again after reconnecting:
carbon keeps one value per path and timestamp, so a repeat is harmless.
"""

from __future__ import annotations

import logging
import select
import selectors
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from vpartcollect.config import Endpoint
from vpartcollect.output.metrics import Metric, format_line
from vpartcollect.output.sinks.base import SinkBase
from vpartcollect.output.sinks.connection import Connection

if TYPE_CHECKING:
    from vpartcollect.config import Config

log = logging.getLogger(__name__)

_WRITE_BATCH = 64 * 1024


class GraphiteSink(SinkBase):
    """One destination, with its own queue and connection."""

    def __init__(self, endpoint: Endpoint, max_lines: int = 100_000,
                 resend_seconds: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.endpoint = endpoint
        self.max_lines = max_lines
        self.resend_seconds = resend_seconds
        self.clock = clock
        self.conn = Connection(endpoint, clock)
        self.queue: deque[bytes] = deque()
        self.inflight: deque[bytes] = deque()  # lines in ``out``, not yet fully written
        self.out = b""
        self.recent: deque[tuple[float, bytes]] = deque()  # sent lines kept for a resend
        self.dropped = 0
        self.sent = 0  # lines handed to the kernel (total)
        self._episode_dropped = 0
        self._down_logged = False
        self._lost_at: float | None = None  # when the last good connection died
        super().__init__()

    def __str__(self) -> str:
        return f"graphite {self.endpoint}"

    def __repr__(self) -> str:
        return f"<GraphiteSink {self.conn!r}, {self.buffered} line(s) waiting>"

    @property
    def sock(self) -> socket.socket | None:
        """The socket, while there is one."""
        return self.conn.sock

    @property
    def connecting(self) -> bool:
        """A connection attempt is in progress."""
        return self.conn.sock is not None and self.conn.connecting

    @property
    def on_close(self) -> Callable[[], None]:
        """Called before the connection closes what is registered with the selector."""
        return self.conn.on_close

    @on_close.setter
    def on_close(self, hook: Callable[[], None]) -> None:
        self.conn.on_close = hook

    # -- what the supervisor sees ----------------------------------------
    @property
    def buffered(self) -> int:
        """Lines not yet handed to the kernel."""
        return len(self.queue) + len(self.inflight)

    def set_bounds(self, max_lines: int, resend_seconds: float) -> None:
        """New bounds (SIGHUP): the queue and the connection stay; a smaller bound drops
        (and counts) the oldest lines over it."""
        self.max_lines, self.resend_seconds = max_lines, resend_seconds
        self._trim()

    def reconfigure(self, old: Config, new: Config) -> bool:
        """SIGHUP: the new bounds; the queue and the connection stay."""
        self.set_bounds(new.graphite_buffer, new.graphite_resend_seconds)
        return True

    def self_metrics(self) -> dict[str, float]:
        """Lines dropped (queue full) and waiting."""
        return {"graphite_dropped": self.dropped, "graphite_buffered": self.buffered}

    def write(self, metrics: Sequence[Metric]) -> None:
        """Queue lines; drop (and count) the oldest when over the bound."""
        self.write_lines(format_line(m.path, m.value, m.ts).encode() for m in metrics)

    def write_lines(self, lines: Iterable[bytes]) -> None:
        """Queue lines already formatted (each ending in a newline)."""
        self.queue.extend(lines)
        self._trim()

    def take_unsent(self) -> list[bytes]:
        """While down: every line it would send on reconnecting (those sent in the resend
        window before the connection died, then the queue), handed over and forgotten."""
        horizon = (self._lost_at or self.clock()) - self.resend_seconds
        lines = [line for at, line in self.recent if at >= horizon]
        lines += self.inflight
        lines += self.queue
        self.recent.clear()
        self.inflight.clear()
        self.queue.clear()
        self.out = b""
        return lines

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
        return self.conn.interest(bool(self.out or self.queue))

    def next_wakeup(self) -> float | None:
        """Monotonic time this sink next needs the loop: a reconnect, or a time limit."""
        return self.conn.next_wakeup()

    def poll(self) -> None:
        """Let the connection start an attempt, or give one up that ran out of time."""
        error = self.conn.poll()
        if error is not None:
            self._down(error)

    def on_ready(self, mask: int) -> None:
        """Handle readiness of our socket: finish connecting, notice a close, send."""
        if not self.conn.up:
            outcome = self.conn.ready()
            if isinstance(outcome, OSError):
                self._down(outcome)
            if outcome is not True:
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
        sock = self.conn.sock
        if sock is None or not self.conn.up or self.buffered:
            return False
        try:
            sock.shutdown(socket.SHUT_WR)
            while (left := deadline - self.clock()) > 0:
                ready, _, _ = select.select([sock], [], [], left)
                if ready and not sock.recv(4096):
                    return True
        except OSError:
            pass
        return False

    def close(self) -> None:
        """Drop the connection (what is queued stays queued)."""
        self.conn.close()

    # -- internals -------------------------------------------------------
    def _connected(self) -> None:
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
        assert self.conn.sock is not None
        try:
            if self.conn.sock.recv(4096):
                return True  # carbon says nothing; ignore whatever it sent
            self._fail(ConnectionResetError("closed by peer"))
        except BlockingIOError:
            return True
        except OSError as exc:
            self._fail(exc)
        return False

    def _send(self) -> None:
        assert self.conn.sock is not None
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
                sent = self.conn.sock.send(self.out)
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
            self.sent += 1
            if self.resend_seconds > 0:
                self.recent.append((now, line))
        while len(self.recent) > self.max_lines:
            self.recent.popleft()

    def _fail(self, exc: OSError) -> None:
        """The established connection failed."""
        if self._lost_at is None:
            self._lost_at = self.clock()
        self._down(self.conn.failed(exc))

    def _down(self, exc: OSError) -> None:
        if not self._down_logged:
            log.warning("%s: %s; buffering and reconnecting with backoff", self,
                        exc.strerror or exc)
            self._down_logged = True
        # Lines cut off mid-write go back first, whole; carbon drops the torn line.
        self.queue.extendleft(reversed(self.inflight))
        self.inflight.clear()
        self.out = b""
