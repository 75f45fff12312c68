"""Metrics to stdout, as Graphite plaintext lines or JSON objects, one per line."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import BinaryIO

from vpartcollect.metrics import Metric, format_line


class StdoutClosed(Exception):
    """The reader of stdout went away (``| head``): time to stop, quietly."""


def json_line(m: Metric) -> str:
    """One metric as a JSON object line."""
    return json.dumps({"path": m.path, "value": m.value, "timestamp": m.ts, "domain": m.domain,
                       "uuid": m.uuid, "tag": m.tag, "instance": m.instance},
                      separators=(",", ":")) + "\n"


class StdoutSink:
    """Blocking writes to stdout: it is the operator's own pipe."""

    def __init__(self, fmt: str = "graphite", stream: BinaryIO | None = None) -> None:
        self.fmt = fmt
        self.stream = stream or sys.stdout.buffer
        self.writing = False  # a stop signal during a stuck write must not wait for it

    def write(self, metrics: Sequence[Metric]) -> None:
        """Write and flush a batch; raise StdoutClosed when nobody reads any more."""
        if not metrics:
            return
        render = json_line if self.fmt == "json" else (
            lambda m: format_line(m.path, m.value, m.ts))
        data = "".join(render(m) for m in metrics).encode()
        self.writing = True
        try:
            self.stream.write(data)
            self.stream.flush()
        except BrokenPipeError:
            # Point stdout at /dev/null so the interpreter's final flush cannot fail too.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise StdoutClosed() from None
        finally:
            self.writing = False
