"""What a client may cost the exporter: bytes and time of a request head, connections.

http.server reads up to 100 header lines of 64 KiB each and gives each connection a
thread for as long as the client keeps it; a flood of headers or of silent
connections then costs CPU and threads. Here a request head has a byte budget and
a deadline, and the connections are bounded: past the bound the oldest idle one
(waiting for or reading a request head) is closed to make room.
"""

from __future__ import annotations

import http.client
import io
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

HEAD_LIMIT = 32 * 1024  # bytes of a request line and headers (a scraper sends < 1 KiB)
IDLE_TIMEOUT = 10.0  # seconds a connection may wait silent for its next request
HEAD_TIMEOUT = 5.0  # seconds from a request's first byte to the end of its head
MAX_CONNECTIONS = 32  # open connections, each with its thread


class HeadTooLarge(http.client.HTTPException):
    """A request head past HEAD_LIMIT (http.server answers 431 and closes)."""


class HeadReader(io.BufferedIOBase):
    """A connection's reader for http.server's request heads: at most ``limit`` bytes
    per head, read within the deadlines (``begin`` starts each head)."""

    def __init__(self, sock: socket.socket, limit: int = HEAD_LIMIT,
                 idle: float = IDLE_TIMEOUT, head: float = HEAD_TIMEOUT,
                 asked: Callable[[], None] = lambda: None) -> None:
        """``asked``: called at the first byte of each request."""
        super().__init__()
        self.sock = sock
        self.asked = asked
        self.limit, self.idle, self.head = limit, idle, head
        self.buf = bytearray()
        self.used = 0
        self.until = 0.0
        self.started = False

    def begin(self) -> None:
        """A new request head: a fresh budget, ``idle`` seconds for its first byte."""
        self.used = 0
        self.started = bool(self.buf)  # a pipelined request has begun already
        self.until = time.monotonic() + (self.head if self.started else self.idle)
        if self.started:
            self.asked()

    def _fill(self) -> bool:
        """One recv under the deadline; False at the end of the stream."""
        left = self.until - time.monotonic()
        if left <= 0:
            raise TimeoutError("request head not complete in time")
        self.sock.settimeout(left)
        chunk = self.sock.recv(16384)
        if not chunk:
            return False
        if not self.started:
            self.started = True
            self.until = time.monotonic() + self.head
            self.asked()
        self.buf += chunk
        return True

    def readline(self, size: int | None = -1) -> bytes:
        """A line of the head (or ``size`` bytes of one); HeadTooLarge past the budget."""
        while True:
            end = self.buf.find(b"\n") + 1
            if size is not None and size >= 0 and len(self.buf) >= size \
                    and (end == 0 or end > size):
                end = size
            if end == 0 and self.used + len(self.buf) > self.limit:
                raise HeadTooLarge(f"request head over {self.limit} bytes")
            if end:
                if self.used + end > self.limit:
                    raise HeadTooLarge(f"request head over {self.limit} bytes")
                line = bytes(self.buf[:end])
                del self.buf[:end]
                self.used += end
                return line
            if not self._fill():
                line = bytes(self.buf)
                self.buf.clear()
                return line

    def readable(self) -> bool:
        return True


@dataclass(eq=False)
class Conn:
    """An open connection: its socket (the TLS one once wrapped), idle since when
    (monotonic; None while a request is being answered), requests answered on it, and
    whether a byte of the next one has come (``asked``, set under the lock)."""

    sock: socket.socket
    idle_since: float | None = field(default_factory=time.monotonic)
    answered: int = 0
    asked: bool = False

    def close(self) -> None:
        """Wake its thread with the end of the stream (shutdown, not close: the
        thread owns the socket). The plain socket call, also under TLS."""
        try:
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
        except OSError:
            pass


def oldest_idle(conns: Iterable[Conn]) -> Conn | None:
    """The connection idle the longest, or None if every one is answering."""
    idle = [c for c in conns if c.idle_since is not None]
    return min(idle, key=lambda c: c.idle_since or 0.0) if idle else None


class Connections:
    """The open connections, at most ``limit``."""

    def __init__(self, limit: int = MAX_CONNECTIONS) -> None:
        self.limit = limit
        self.lock = threading.Lock()
        self.open: list[Conn] = []
        self.evicted = 0  # idle connections closed to make room
        self.refused = 0  # connections closed at once: every other one busy

    def admit(self, sock: socket.socket) -> Conn | None:
        """A new connection, room made by closing the oldest idle one; None if every
        open one is answering a request (the caller closes the new one)."""
        with self.lock:
            if len(self.open) >= self.limit:
                victim = oldest_idle(self.open)
                if victim is None:
                    self.refused += 1
                    return None
                self.open.remove(victim)
                victim.close()
                self.evicted += 1
            conn = Conn(sock)
            self.open.append(conn)
            return conn

    def idle(self, conn: Conn) -> None:
        """``conn`` waits for (or reads) a request head: it may be closed for room. Idle
        since it was admitted or last answered, not since its thread first ran: threads
        start in any order on a busy host, and the oldest must go first."""
        with self.lock:
            if conn.idle_since is None:
                conn.idle_since = time.monotonic()

    def busy(self, conn: Conn) -> None:
        """``conn`` is answering a request: it stays."""
        with self.lock:
            conn.idle_since = None

    def asked(self, conn: Conn) -> None:
        """The first byte of a request came on ``conn``: a drain lets it be answered."""
        with self.lock:
            conn.asked = True

    def answered(self, conn: Conn) -> None:
        """``conn`` answered a request."""
        with self.lock:
            conn.answered += 1
            conn.asked = False

    def close_waiting(self) -> bool:
        """Close every connection that answered a request and has no byte of the next
        (Go's idle connection: a client retries a request it sends on one as it is
        closed); False when no connection is left."""
        with self.lock:
            for conn in self.open:
                if conn.answered and not conn.asked:
                    conn.close()
            return bool(self.open)

    def leave(self, conn: Conn) -> None:
        """``conn`` is closed."""
        with self.lock:
            if conn in self.open:
                self.open.remove(conn)
