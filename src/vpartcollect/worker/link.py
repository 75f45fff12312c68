"""The worker's end of its two pipes to the supervisor. Runs in the child, after fork.

Ticks come in on the control pipe, one at a time (the supervisor sends a tick
only to an idle worker). Everything else goes out on the result pipe, written
blocking: the supervisor always reads, and a worker has nothing better to do.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from vpartcollect import wire
from vpartcollect.calls import CallKind
from vpartcollect.health import HealthValue
from vpartcollect.samples import DomainSample


class Link:
    """Four verbs out (hello, busy, results, done; idle when a call gave nothing), one in."""

    def __init__(self, ctl_fd: int, out_fd: int) -> None:
        self.ctl_fd = ctl_fd
        self.out_fd = out_fd
        self.decoder = wire.FrameDecoder()
        self.sent = 0
        self.busy_with: CallKind | None = None

    def __repr__(self) -> str:
        doing = self.busy_with.value if self.busy_with else "idle"
        return f"<Link ctl={self.ctl_fd} out={self.out_fd} {doing}, {self.sent} frame(s) sent>"

    def next_tick(self) -> wire.Tick | None:
        """Block until the supervisor sends a tick; None when it closed the pipe."""
        while True:
            data = os.read(self.ctl_fd, 65536)
            if not data:
                return None
            for msg in self.decoder.feed(data):
                if isinstance(msg, wire.Tick):
                    return msg

    def hello(self, instance: int, ncpus: int, driver: str, bulk: Sequence[str],
              fallback: Sequence[str]) -> None:
        """Connected to libvirt: ready for ticks."""
        self._send(wire.Hello(instance, os.getpid(), ncpus, driver, list(bulk), list(fallback)))

    def busy(self, kind: CallKind, uuids: Sequence[str]) -> None:
        """About to make a call that may block (the supervisor holds us to a deadline)."""
        self.busy_with = kind
        self._send(wire.Busy(kind, list(uuids)))

    def idle(self, why: str) -> None:
        """A call announced busy ended without a result (a failed connect)."""
        self.busy_with = None
        self._send(wire.Idle(why))

    def results(self, tick: float, samples: Sequence[DomainSample]) -> None:
        """Samples for ``tick``."""
        self.busy_with = None
        if samples:
            self._send(wire.Results(tick, list(samples)))

    def done(self, tick: float, seconds: float, domains: int, blocked: int,
             health: Sequence[HealthValue] = ()) -> None:
        """Finished ``tick``: ``domains`` sampled, ``blocked`` calls still in libvirtd,
        ``health``: what this worker saw of the host (health.py)."""
        self.busy_with = None
        self._send(wire.Done(tick, seconds, domains, blocked, list(health)))

    def _send(self, msg: wire.Message) -> None:
        data = memoryview(wire.encode(msg))
        while data:
            data = data[os.write(self.out_fd, data):]
        self.sent += 1
