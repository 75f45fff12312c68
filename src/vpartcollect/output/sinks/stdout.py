"""Metrics to stdout, as Graphite plaintext lines or JSON objects, one per line."""

from __future__ import annotations

import json
import logging
import os
import select
import stat
import sys
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

from vpartcollect.output.metrics import Metric, format_line
from vpartcollect.output.sinks.base import SinkBase, SinkClosed, SinkFailed

if TYPE_CHECKING:
    from vpartcollect.config import Config

# A write may block part-way through a chunk; a signal then ends it with the count
# written so far, and the loop gets to look at ``stopping``.
CHUNK = 64 * 1024
POLL = 0.5  # seconds between looks at whether a stop was asked for
STOP_GRACE = 2.0  # seconds a stop waits for a reader that takes nothing
# Beside Graphite, stdout never waits: what its reader has not taken waits in memory, up
# to this much (the oldest batches go beyond it, logged once per episode).
SPARE_BYTES = 16 * 1024 * 1024
PIPE_BUF = 4096  # what a pipe that polls writable takes without blocking
STALL_WARN = 5.0  # seconds lines wait for stdout's reader before a warning

log = logging.getLogger(__name__)


class StdoutClosed(SinkClosed):
    """The reader of stdout went away (``| head``) or stopped reading during a stop."""


class StdoutFailed(StdoutClosed, SinkFailed):
    """Writing to stdout failed otherwise (a full disk, an I/O error): one line, and the
    run goes on with its other outputs, or ends with exit status 1 when it has none."""


def json_line(m: Metric) -> str:
    """One metric as a JSON object line."""
    return json.dumps({"path": m.path, "value": m.value, "timestamp": m.ts, "domain": m.domain,
                       "uuid": m.uuid, "tag": m.tag, "instance": m.instance},
                      separators=(",", ":")) + "\n"


class StdoutSink(SinkBase):
    """Writes to stdout, blocking while the reader is slow: it is the operator's own pipe.

    Once ``stopping`` is set (by the supervisor's signal handler), a reader that
    takes nothing for STOP_GRACE seconds no longer holds the stop up. With ``spare``
    (other outputs exist too, e.g. Graphite) it never blocks: a reader that does not
    keep up loses the oldest lines beyond SPARE_BYTES, not the collector its Graphite.
    """

    def __init__(self, fmt: str = "graphite", fd: int | None = None,
                 spare: bool = False) -> None:
        super().__init__()
        self.fmt = fmt
        self.fd = sys.stdout.fileno() if fd is None else fd
        self.stopping = False
        self.spare = spare
        self.waiting: deque[memoryview] = deque()  # spare: what the reader has not taken
        self.waiting_bytes = 0
        self.dropping = False
        self.waiting_since: float | None = None
        self.warned = False

    def write(self, metrics: Sequence[Metric]) -> None:
        """Write a batch in whole; raise StdoutClosed when nobody reads any more,
        StdoutFailed when stdout refuses it."""
        if not metrics:
            return
        render = json_line if self.fmt == "json" else (
            lambda m: format_line(m.path, m.value, m.ts))
        data = memoryview("".join(render(m) for m in metrics).encode())
        try:
            if self.spare:
                self._queue(data)
            else:
                while self.waiting:  # queued while Graphite was there: they go first
                    self._write_all(self.waiting[0])
                    self.waiting_bytes -= len(self.waiting.popleft())
                self._write_all(data)
        except OSError as exc:
            raise self._failed(exc) from None

    def _failed(self, exc: OSError) -> StdoutClosed:
        """What a write's OSError means: its reader went away (BrokenPipeError), or it
        failed (a full disk). Stdout then points at /dev/null, so that the interpreter's
        final flush cannot fail too."""
        self._to_devnull()
        if isinstance(exc, BrokenPipeError):
            return StdoutClosed()
        return StdoutFailed(f"stdout: {exc.strerror or exc}")

    def __str__(self) -> str:
        return "stdout"

    def beside(self, others: int) -> None:
        """Other outputs: never block (lines wait in memory); none: block on the reader."""
        self.spare = others > 0

    def stop_asked(self) -> None:
        """A stop was asked: a write in progress finishes if read, but not forever."""
        self.stopping = True

    def reconfigure(self, old: Config, new: Config) -> bool:
        """SIGHUP: the new format from the next batch (what is queued stays first)."""
        self.fmt = new.format
        return True

    def poll(self) -> None:
        """Beside other outputs: hand the reader what it takes now, never waiting."""
        if not self.waiting:
            return
        try:
            self._send_waiting(0.0)
        except OSError as exc:
            raise self._failed(exc) from None

    def finish(self, deadline: float) -> bool:
        """At exit: the reader gets what waits for it until monotonic ``deadline``."""
        self.flush_waiting(deadline)
        return True  # what the reader left is one warning already

    def _write_all(self, data: memoryview) -> None:
        stuck_since: float | None = None
        while data:
            _, writable, _ = select.select([], [self.fd], [], POLL)
            if not writable:
                if self.stopping:
                    stuck_since = stuck_since or time.monotonic()
                    if time.monotonic() - stuck_since > STOP_GRACE:
                        raise StdoutClosed()
                continue
            stuck_since = None
            data = data[os.write(self.fd, data[:CHUNK]) :]

    def _queue(self, data: memoryview) -> None:
        self.waiting.append(data)
        self.waiting_bytes += len(data)
        while self.waiting_bytes > SPARE_BYTES and len(self.waiting) > 1:
            self.waiting_bytes -= len(self.waiting.popleft())
            if not self.dropping:
                log.warning("stdout: %d MiB wait for its reader; the oldest lines are "
                            "dropped", SPARE_BYTES >> 20)
                self.dropping = True
        self._send_waiting(0.0)
        if not self.waiting:
            self.dropping, self.waiting_since, self.warned = False, None, False
        elif self.waiting_since is None:
            self.waiting_since = time.monotonic()
        elif not self.warned and time.monotonic() - self.waiting_since > STALL_WARN:
            log.warning("stdout: lines have waited %.0f s for its reader; they wait in "
                        "memory (Graphite goes on)", STALL_WARN)
            self.warned = True

    def _send_waiting(self, deadline: float) -> None:
        """Write what waits while stdout takes it without blocking, until monotonic
        ``deadline`` (0: only what it takes now)."""
        # A pipe that polls writable takes PIPE_BUF bytes without blocking; a file or a
        # terminal takes what it is given.
        step = PIPE_BUF if stat.S_ISFIFO(os.fstat(self.fd).st_mode) else CHUNK
        while self.waiting:
            left = max(0.0, deadline - time.monotonic())
            if not select.select([], [self.fd], [], min(POLL, left))[1]:
                if left <= 0:
                    return
                continue
            head = self.waiting[0]
            done = os.write(self.fd, head[:step])
            self.waiting_bytes -= done
            if done == len(head):
                self.waiting.popleft()
            else:
                self.waiting[0] = head[done:]
        # All taken (also by a poll between writes): a later stall or drop is news again.
        self.dropping, self.waiting_since, self.warned = False, None, False

    def flush_waiting(self, deadline: float, warn: bool = True) -> None:
        """At exit: what waits for the reader (beside Graphite) is written until monotonic
        ``deadline``; what is left then is one warning (with ``warn``). Never raises."""
        try:
            self._send_waiting(deadline)
        except OSError as exc:
            self._to_devnull()
            if not isinstance(exc, BrokenPipeError):
                log.error("stdout: %s", exc.strerror or exc)
            self.waiting.clear()
            self.waiting_bytes = 0
        if self.waiting and warn:
            log.warning("stdout: %d bytes not taken by its reader before exit",
                        self.waiting_bytes)

    def _to_devnull(self) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self.fd)
        os.close(devnull)
