"""Where metrics go: stdout and Graphite plaintext destinations (in memory, or spooled)."""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from typing import Protocol

from vpartcollect.config import Endpoint
from vpartcollect.metrics import Metric


class Destination(Protocol):
    """What the publisher needs of a Graphite destination (graphite.GraphiteSink, or
    spool_channel.SpoolChannel when its lines are spooled on disk)."""

    endpoint: Endpoint
    on_close: Callable[[], None]

    @property
    def buffered(self) -> int: ...

    @property
    def dropped(self) -> int: ...

    def write(self, metrics: Sequence[Metric]) -> None: ...

    def reconfigure(self, max_lines: int, resend_seconds: float) -> None: ...

    def interest(self) -> tuple[socket.socket | int, int] | None: ...

    def next_wakeup(self) -> float | None: ...

    def poll(self) -> None: ...

    def on_ready(self, mask: int) -> None: ...

    def finish(self, deadline: float) -> bool: ...

    def close(self) -> None: ...
