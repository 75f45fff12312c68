"""Metrics to stdout, as Graphite plaintext lines or JSON objects, one per line."""

from __future__ import annotations

import json
import os
import select
import sys
import time
from collections.abc import Sequence

from vpartcollect.metrics import Metric, format_line

# A write may block part-way through a chunk; a signal then ends it with the count
# written so far, and the loop gets to look at ``stopping``.
CHUNK = 64 * 1024
POLL = 0.5  # seconds between looks at whether a stop was asked for
STOP_GRACE = 2.0  # seconds a stop waits for a reader that takes nothing


class StdoutClosed(Exception):
    """The reader of stdout went away (``| head``) or stopped reading during a stop."""


def json_line(m: Metric) -> str:
    """One metric as a JSON object line."""
    return json.dumps({"path": m.path, "value": m.value, "timestamp": m.ts, "domain": m.domain,
                       "uuid": m.uuid, "tag": m.tag, "instance": m.instance},
                      separators=(",", ":")) + "\n"


class StdoutSink:
    """Writes to stdout, blocking while the reader is slow: it is the operator's own pipe.

    Once ``stopping`` is set (by the supervisor's signal handler), a reader that
    takes nothing for STOP_GRACE seconds no longer holds the stop up.
    """

    def __init__(self, fmt: str = "graphite", fd: int | None = None) -> None:
        self.fmt = fmt
        self.fd = sys.stdout.fileno() if fd is None else fd
        self.stopping = False

    def write(self, metrics: Sequence[Metric]) -> None:
        """Write a batch in whole; raise StdoutClosed when nobody reads any more."""
        if not metrics:
            return
        render = json_line if self.fmt == "json" else (
            lambda m: format_line(m.path, m.value, m.ts))
        data = memoryview("".join(render(m) for m in metrics).encode())
        stuck_since: float | None = None
        try:
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
        except BrokenPipeError:
            # Point stdout at /dev/null so the interpreter's final flush cannot fail too.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.fd)
            raise StdoutClosed() from None
