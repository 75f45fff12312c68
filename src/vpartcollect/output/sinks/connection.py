"""One non-blocking TCP connection to a Graphite destination, driven by a selector loop.

Connecting never blocks: a host name is looked up off the loop (resolve.py) at
each attempt, every address it has is tried in turn, alternating IPv6 and IPv4,
each with a time limit, and a failed attempt is tried again with backoff. What
goes over the connection is the sink's business (graphite.py).
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import time
from collections.abc import Callable

from vpartcollect.backoff import backoff
from vpartcollect.config import Endpoint
from vpartcollect.output.sinks.resolve import Address, Lookup, numeric

BACKOFF_MIN = 0.5
# Carbon back from a restart is found within a second at a numeric address (a refused
# connect costs nothing), within a few seconds behind a name (each try is a lookup).
BACKOFF_MAX = 1.0
BACKOFF_MAX_NAMED = 5.0
# A connect that has not completed by then is given up for the next address (another
# family often works at once); the last address gets longer before it counts as down.
ATTEMPT_SECONDS = 2.0
LAST_ATTEMPT_SECONDS = 10.0


class Connection:
    """Connect, reconnect with backoff, and say what to wait for."""

    def __init__(self, endpoint: Endpoint, clock: Callable[[], float] = time.monotonic) -> None:
        self.endpoint = endpoint
        self.clock = clock
        self.sock: socket.socket | None = None
        self.connecting = False
        self.lookup: Lookup | None = None  # a name lookup in progress
        self.addresses: list[Address] = []  # addresses still to try in this attempt
        self.attempt_until = 0.0  # when the connect in progress is given up
        self.next_attempt = 0.0
        self.failures = 0  # connection attempts failed in a row
        self.on_close: Callable[[], None] = lambda: None  # the selector lets go of us

    def __repr__(self) -> str:
        state = ("connected" if self.up else "looking up" if self.lookup else
                 "connecting" if self.connecting else f"down ({self.failures} failures)")
        return f"<Connection {self.endpoint} {state}>"

    @property
    def up(self) -> bool:
        """Connected and ready for data."""
        return self.sock is not None and not self.connecting

    def interest(self, sending: bool) -> tuple[socket.socket | int, int] | None:
        """What to wait for (``sending``: there is data to write), or None while idle."""
        if self.lookup is not None:
            return self.lookup.fd, selectors.EVENT_READ
        if self.sock is None:
            return None
        if self.connecting:
            return self.sock, selectors.EVENT_WRITE
        return self.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if sending else 0)

    def next_wakeup(self) -> float | None:
        """Monotonic time the loop must look at us: a reconnect, or a time limit."""
        if self.lookup is not None:
            return self.lookup.deadline
        if self.sock is None:
            return self.next_attempt
        return self.attempt_until if self.connecting else None

    def poll(self) -> OSError | None:
        """Start an attempt when down and the backoff has passed; give up a lookup or a
        connect that ran out of time. Returns the error when an attempt failed."""
        if self.lookup is not None:
            if self.lookup.expired():
                return self.failed(TimeoutError(f"name lookup of {self.endpoint.host} "
                                                "timed out"))
        elif self.sock is None:
            if self.clock() >= self.next_attempt:
                return self._connect()
        elif self.connecting and self.clock() >= self.attempt_until:
            return self._next_address(TimeoutError("connect timed out"))
        return None

    def ready(self) -> OSError | bool:
        """The lookup or the connect in progress is ready: True when now connected, the
        error when the attempt failed, False when there is nothing more to do yet."""
        if self.lookup is not None:
            outcome = self.lookup.read()
            if outcome is None:
                return False
            self.lookup = None
            self.addresses, error = outcome
            failed = self._next_address(OSError(error) if error else None)
            return failed if failed is not None else False
        if self.sock is None or not self.connecting:
            return False
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            failed = self._next_address(OSError(err, os.strerror(err)))
            return failed if failed is not None else False
        self.connecting, self.failures = False, 0
        return True

    def failed(self, exc: OSError) -> OSError:
        """The connection (or attempt) is over: close it, schedule the next one."""
        self.close()
        self.addresses = []
        cap = BACKOFF_MAX if numeric(self.endpoint.host, 0) is not None else BACKOFF_MAX_NAMED
        self.next_attempt = self.clock() + backoff(self.failures, BACKOFF_MIN, cap)
        self.failures += 1
        return exc

    def close(self) -> None:
        """Drop the connection. The selector lets go of it first: a descriptor closed while
        registered, then reused by the next socket or pipe, would make it refuse that one."""
        self.on_close()
        if self.lookup is not None:
            self.lookup.close()
            self.lookup = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.connecting = False

    # -- internals ------------------------------------------------------------
    def _connect(self) -> OSError | None:
        addresses = numeric(self.endpoint.host, self.endpoint.port)
        if addresses is not None:
            self.addresses = addresses
            return self._next_address(None)
        try:
            self.lookup = Lookup(self.endpoint.host, self.endpoint.port, self.clock)
        except OSError as exc:  # no fork: out of processes or memory
            return self.failed(exc)
        return None

    def _next_address(self, error: OSError | None) -> OSError | None:
        """Connect to the next address not yet tried; when none is left, fail with the
        last ``error``."""
        self.close()
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
            return None
        return self.failed(error or OSError("no address to connect to"))
