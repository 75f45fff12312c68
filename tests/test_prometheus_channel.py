"""The Prometheus sink: its exporter's restarts (backoff doubling while it crashes in a
row, from the start again after an exporter that lived a minute: a real exporter
process, SIGKILLed; the clock is the sink's injected one), and the frames it queues."""

from __future__ import annotations

import os
import selectors
import signal

import msgpack
import pytest
from promlab import free_port

from vpartcollect.config import Endpoint
from vpartcollect.output.prometheus import channel
from vpartcollect.output.prometheus.channel import RESPAWN_MIN, PrometheusSink
from vpartcollect.output.prometheus.server import ExporterSettings
from vpartcollect.samples import DomainSample


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


def unpacked(sink: PrometheusSink) -> list[list[object]]:
    return [msgpack.unpackb(f, raw=False) for f in sink.outbox]


def test_a_worker_a_reload_removed_finishes_its_tick_as_virt_0_without_its_own_values(
        ) -> None:
    """Review: a retiring worker of an instance no more (3 -> 2) still sends its tick;
    its board entries were never dropped, its virt-2 values stayed in every scrape."""
    sink = PrometheusSink(Endpoint("127.0.0.1", free_port()),
                          ExporterSettings(1.0, False, 2, 10.0))
    try:
        sink.samples(2, 100.0, [DomainSample("u", "d", None, False, {"cpu.time": 1}, 100.0)])
        sink.tick_done(2, 100.0, {"domains": 1.0})
        sink.tick_done(1, 100.0, {"domains": 0.0})
        assert [(f[0], f[1]) for f in unpacked(sink)] == [("results", 0), ("done", 1)]
    finally:
        sink.close()


def test_the_recap_and_ready_at_the_outbox_head_are_never_trimmed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review: a full outbox dropped its oldest frames, the recap's first: the new
    exporter would serve a board rebuilt in part."""
    monkeypatch.setattr(channel, "OUTBOX_BYTES", 2000)
    sink = PrometheusSink(Endpoint("127.0.0.1", free_port()),
                          ExporterSettings(1.0, False, 1, 10.0))
    try:
        head = [msgpack.packb(["results", 0, b"r" * 500]), msgpack.packb(["ready"])]
        sink.outbox.extend(head)
        sink.outbox_bytes, sink.protected = sum(map(len, head)), 2
        for tick in range(10):
            sink.tick_started(float(tick), {"pad": 1.0, "x" * 300: 2.0})
        frames = unpacked(sink)
        assert frames[:2] == [["results", 0, b"r" * 500], ["ready"]]
        assert sink.outbox_bytes <= 2000 and sink.dropped > 0
        assert frames[-1][2] == 9.0 and len(frames) < 12  # the newest stays
    finally:
        sink.close()
