"""The Prometheus sink's exporter restarts: backoff doubling while it crashes in a row,
from the start again after an exporter that lived a minute (a real exporter process,
SIGKILLed; the clock is the sink's injected one)."""

from __future__ import annotations

import os
import selectors
import signal

from promlab import free_port

from vpartcollect.config import Endpoint
from vpartcollect.output.prometheus.channel import RESPAWN_MIN, PrometheusSink
from vpartcollect.output.prometheus.server import ExporterSettings


def test_restart_backoff_doubles_in_a_crash_loop_and_resets_after_a_long_life() -> None:
    now = [1000.0]
    sink = PrometheusSink(Endpoint("127.0.0.1", free_port()),
                          ExporterSettings(1.0, False, 1, 10.0), clock=lambda: now[0])

    def crash_after(lived: float) -> float:
        """Start the exporter, let ``lived`` seconds pass, kill it: the delay before the
        next start."""
        now[0] = max(now[0], sink.start_at)
        sink.poll()
        assert sink.sock is not None and sink.pid
        now[0] += lived
        pid = sink.pid
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)  # the supervisor's reaper, here
        with selectors.DefaultSelector() as sel:
            sel.register(sink.sock, selectors.EVENT_READ)
            assert sel.select(10)
        sink.on_ready(selectors.EVENT_READ)
        assert sink.sock is None
        return sink.start_at - now[0]

    try:
        assert [crash_after(1.0) for _ in range(3)] == [RESPAWN_MIN, 2 * RESPAWN_MIN,
                                                        4 * RESPAWN_MIN]
        assert crash_after(61.0) == RESPAWN_MIN  # was 8 * RESPAWN_MIN, and so on to 30 s
        assert crash_after(1.0) == 2 * RESPAWN_MIN
    finally:
        sink.close()
