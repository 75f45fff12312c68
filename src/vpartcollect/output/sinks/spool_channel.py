"""A spooled Graphite destination as the supervisor sees it: a socket to its spooler process.

The supervisor never writes to disk nor to carbon for such a destination: it
packs each batch of lines into one frame and writes it, non-blocking, to a
socket pair whose other end is the destination's spooler (spooler.py). Frames
that do not fit wait in a bounded outbox (``graphite_buffer`` lines, oldest
dropped first and counted). The spooler reports every second what it holds;
when it dies it is started again with backoff, and the outbox waits meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import msgpack

from vpartcollect import children
from vpartcollect.backoff import backoff
from vpartcollect.config import Endpoint
from vpartcollect.daemon import fork_child
from vpartcollect.output.metrics import Metric, format_line
from vpartcollect.output.sinks.base import SinkBase
from vpartcollect.output.sinks.spooler import SpoolSettings, spooler_main

if TYPE_CHECKING:
    from vpartcollect.config import Config

log = logging.getLogger(__name__)

SOCKET_BUFFER = 4 * 1024 * 1024  # a tick of a large host fits at once
RESPAWN_MIN, RESPAWN_MAX = 0.5, 30.0


class SpoolChannel(SinkBase):
    """One spooled destination: the socket to its spooler, and the spooler's last report."""

    def __init__(self, endpoint: Endpoint, settings: SpoolSettings,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.endpoint = endpoint
        self.settings = settings
        self.max_lines = settings.max_lines
        self.clock = clock
        self.sock: socket.socket | None = None
        self.pid = 0
        self.outbox: deque[tuple[bytes, int]] = deque()  # (frame, lines)
        self.head_sent = 0  # bytes of the first frame already written
        self.outbox_lines = 0
        self.dropped_here = 0
        self.report: dict[str, float] = {}
        self.unpacker = msgpack.Unpacker(raw=False, max_buffer_size=1 << 20)
        self.failures = 0
        self.start_at = 0.0

    def __str__(self) -> str:
        return f"graphite {self.endpoint} (spooled)"

    def __repr__(self) -> str:
        return (f"<SpoolChannel {self.endpoint} spooler pid {self.pid or '-'}, "
                f"{self.outbox_lines} line(s) in the outbox>")

    # -- what the publisher sees ----------------------------------------------
    @property
    def buffered(self) -> int:
        """Lines not yet in the spooler's hands (the outbox)."""
        return self.outbox_lines

    @property
    def dropped(self) -> int:
        """Lines dropped here (outbox full) and in the spooler (spool or memory full)."""
        return self.dropped_here + int(self.report.get("dropped", 0))

    def self_metrics(self) -> dict[str, float]:
        """What the outbox and the spooler hold, drop and drain (its last report)."""
        report = self.report
        values = {"graphite_dropped": self.dropped,
                  "graphite_buffered": self.outbox_lines + report.get("buffered", 0)}
        for name, key in (("spool_lines", "spooled"), ("spool_bytes", "bytes"),
                          ("spool_drained_per_second", "drained"),
                          ("spool_corrupt_bytes", "corrupt")):
            values[name] = report.get(key, 0)
        if report.get("oldest"):
            values["spool_oldest_timestamp"] = report["oldest"]
        return values

    def reconfigure(self, old: Config, new: Config) -> bool:
        """SIGHUP: new bounds, and the flush timeout a respawned spooler starts with."""
        self.set_bounds(new.graphite_buffer, new.graphite_resend_seconds)
        self.settings = replace(self.settings, flush_timeout=new.flush_timeout)
        return True

    def set_bounds(self, max_lines: int, resend_seconds: float) -> None:
        """New bounds (SIGHUP): for the outbox at once, and for the running spooler by a
        frame (the connection to carbon and what waits stay; a restarted spooler starts
        with them)."""
        self.max_lines = max_lines
        self.settings = replace(self.settings, max_lines=max_lines,
                                resend_seconds=resend_seconds)
        frame: bytes = msgpack.packb(["settings", max_lines, resend_seconds],
                                     use_bin_type=True)
        self.outbox.append((frame, 0))
        self._trim()
        if self.sock is not None:
            self._send()

    def write(self, metrics: Sequence[Metric]) -> None:
        """One frame for the batch, to the spooler as soon as the socket takes it."""
        if not metrics:
            return
        payload = "".join(format_line(m.path, m.value, m.ts) for m in metrics).encode()
        oldest = min(m.ts for m in metrics)
        frame: bytes = msgpack.packb(["lines", payload, len(metrics), oldest],
                                     use_bin_type=True)
        self.outbox.append((frame, len(metrics)))
        self.outbox_lines += len(metrics)
        self._trim()
        if self.sock is not None:  # else it waits (bounded) for the spooler's successor
            self._send()

    def interest(self) -> tuple[socket.socket, int] | None:
        """The socket and events to wait for, or None while the spooler is down."""
        if self.sock is None:
            return None
        return self.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if self.outbox else 0)

    def next_wakeup(self) -> float | None:
        """When the spooler is due to be started again."""
        return self.start_at if self.sock is None else None

    def poll(self) -> None:
        """Start the spooler when it is not running and its backoff has passed."""
        if self.sock is None and self.clock() >= self.start_at:
            self._start()

    def on_ready(self, mask: int) -> None:
        """Read the spooler's reports (or its end), write what waits for it."""
        if self.sock is None:  # closed by an earlier event of the same select()
            return
        if mask & selectors.EVENT_READ:
            self._read()
        if mask & selectors.EVENT_WRITE and self.sock is not None:
            self._send()

    def finish(self, deadline: float) -> bool:
        """At exit: hand over the outbox, tell the spooler to stop, and wait (until monotonic
        ``deadline``) for it to keep what it holds and exit. True when it did."""
        if self.sock is None:
            return not self.outbox
        self.outbox.append((msgpack.packb(["stop"]), 0))
        self.sock.setblocking(True)
        done = False
        try:
            while self.outbox and (left := deadline - self.clock()) > 0:
                self.sock.settimeout(left)
                self._send()
            while (left := deadline - self.clock()) > 0:
                self.sock.settimeout(left)
                if not self.sock.recv(1 << 16):
                    done = True  # it closed its end: everything is on disk
                    break
        except OSError:
            pass
        self.close()
        return done and not self.outbox

    def close(self) -> None:
        """Close the socket; a spooler still running is stopped (what it holds is kept)."""
        self.on_close()
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.pid and children.running(self.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
        self.pid = 0  # the process's reaper collects it

    # -- internals ----------------------------------------------------------------
    def _start(self) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for sock in (mine, theirs):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        parent = os.getpid()
        try:
            self.pid = fork_child({theirs.fileno()}, lambda: spooler_main(
                self.endpoint, self.settings, theirs, parent), "spool", str(self.endpoint))
        except OSError as exc:
            mine.close()
            theirs.close()
            self._died(f"cannot start it: {exc.strerror or exc}")
            return
        pid = self.pid
        children.register(pid, lambda _status: self._reaped(pid))
        theirs.close()
        mine.setblocking(False)
        self.sock, self.head_sent = mine, 0
        self.unpacker = msgpack.Unpacker(raw=False, max_buffer_size=1 << 20)

    def _reaped(self, pid: int) -> None:
        """The reaper collected a spooler of ours (its socket's end says the rest)."""
        if pid == self.pid:
            self.pid = 0  # its pid may be someone else's from now on

    def _died(self, why: str) -> None:
        self.close()
        self.head_sent = 0  # a frame cut off goes again whole
        delay = backoff(self.failures, RESPAWN_MIN, RESPAWN_MAX)
        self.start_at = self.clock() + delay
        self.failures += 1
        log.warning("%s: spooler %s; starting it again in %.1f s", self, why, delay)

    def _read(self) -> None:
        assert self.sock is not None
        try:
            data = self.sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._died("exited")
            return
        try:
            self.unpacker.feed(data)
            for frame in self.unpacker:
                self._reported(frame)
        except (ValueError, msgpack.UnpackException):
            self._died("sent garbage")

    def _reported(self, frame: Any) -> None:
        if (isinstance(frame, list) and len(frame) == 2 and frame[0] == "stats"
                and isinstance(frame[1], dict)):
            self.report = {str(k): float(v) for k, v in frame[1].items()
                           if isinstance(v, int | float) and not isinstance(v, bool)}
            self.failures = 0

    def _send(self) -> None:
        assert self.sock is not None
        while self.outbox:
            frame, lines = self.outbox[0]
            try:
                sent = self.sock.send(frame[self.head_sent:])
            except (BlockingIOError, TimeoutError):
                return
            except OSError:
                self._died("went away")
                return
            self.head_sent += sent
            if self.head_sent < len(frame):
                return
            self.outbox.popleft()
            self.outbox_lines -= lines
            self.head_sent = 0

    def _trim(self) -> None:
        dropped = 0
        while self.outbox_lines > self.max_lines and len(self.outbox) > 1:
            _frame, lines = self.outbox[1] if self.head_sent else self.outbox[0]
            del self.outbox[1 if self.head_sent else 0]
            self.outbox_lines -= lines
            dropped += lines
        if dropped:
            if not self.dropped_here:
                log.warning("%s: the spooler does not keep up; dropping the oldest lines", self)
            self.dropped_here += dropped
