"""The sink seam: a kind of output added through the factory, the publisher unchanged."""

from __future__ import annotations

import logging
import selectors
import socket
import sys

import pytest
from capture import capture_sinks

from vpartcollect import wire
from vpartcollect.config import build
from vpartcollect.output.publisher import Publisher
from vpartcollect.output.sinks.base import Registrations, combine
from vpartcollect.output.sinks.stdout import StdoutSink

STATS: wire.Stats = {"state.state": 1, "cpu.time": 0, "block.count": 1, "block.0.name": "vda",
                     "block.0.rd.bytes": 0, "balloon.current": 1024}


def results(tick: float, rd: int) -> wire.Results:
    stats = {**STATS, "block.0.rd.bytes": rd}
    return wire.Results(tick, [wire.DomainSample("u1", "vm1", "virt-0", False, stats, tick)])


def test_a_registered_sink_gets_metrics_raw_samples_ends_of_ticks_and_reports() -> None:
    with capture_sinks() as made:
        pub = Publisher(build({"hostname": "h", "stdout": False}))
    [sink] = made
    assert pub.sinks == [sink] and sink.others == 0
    pub.samples(0, results(100.0, 0), ncpus=1)
    pub.samples(0, results(100.0, 7), ncpus=1)  # a second sample of the tick: dropped
    pub.samples(0, results(101.0, 4096), ncpus=1)
    pub.instance_done(0, 101.0, {"domains": 1})
    sink.report = {"capture_lines": 3}
    pub.new_tick(102.0, pub.tracked())
    assert "vm1.virt.disk_octets-vda.read 4096 101\n" in sink.lines
    assert "vm1.virt.memory-total 1048576 100\n" in sink.lines
    assert "h.vpartcollect-virt-0.duplicate_samples 1 101\n" in sink.lines
    assert "h.vpartcollect.capture_lines 3 102\n" in sink.lines
    # The raw counters of every sample admitted, as the worker read them, and the end of
    # the instance's tick.
    assert [(i, t, s.stats["block.0.rd.bytes"]) for i, t, s in sink.raw] == [
        (0, 100.0, 0), (0, 101.0, 4096)]
    assert sink.ticks == [(0, 101.0)]
    assert sink.own == {0: {"domains": 1, "duplicate_samples": 1}}
    assert sink.started == [(102.0, {"tracked_domains": 1, "capture_lines": 3})]
    assert pub.forget_older_than(200.0) == {"u1"} and sink.forgotten == {"u1"}
    pub.finish(selectors.DefaultSelector())
    assert sink.calls == ["finish", "close"]


def test_a_reload_keeps_the_sink_of_the_same_key_and_closes_one_no_longer_asked() -> None:
    old, new = build({"stdout": False}), build({"stdout": False, "hostname": "x"})
    with capture_sinks() as made:
        pub = Publisher(old)
        pub.reconfigure(old, new, selectors.DefaultSelector())
    assert len(made) == 1 and made[0].calls == ["reconfigure"] and made[0].cfg is new
    pub.reconfigure(new, old, selectors.DefaultSelector())  # the kind is gone now
    assert made[0].calls == ["reconfigure", "close"] and pub.sinks == []


def test_stdout_is_told_it_runs_beside_another_output(monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Beside another output stdout never blocks; when it fails (a full disk) the other
    output goes on and one line says so."""
    with open("/dev/full", "w") as full:
        monkeypatch.setattr(sys, "stdout", full)
        with capture_sinks() as made:
            pub = Publisher(build({"hostname": "h", "stdout": True}))
        stdout = pub.sinks[-1]
        assert isinstance(stdout, StdoutSink) and stdout.spare and made[0].others == 1
        with caplog.at_level(logging.ERROR):
            pub.samples(0, results(100.0, 0), ncpus=1)
            pub.samples(0, results(101.0, 10), ncpus=1)
    assert pub.sinks == made and "vm1.virt.disk_octets-vda.read 10 101\n" in made[0].lines
    assert [r.message for r in caplog.records] == [
        "stdout: No space left on device; metrics go on to the other outputs (capture)"]
    # A SIGHUP does not make it again to write into /dev/null: it stays off, and says so.
    cfg = build({"hostname": "h", "stdout": True})
    with capture_sinks() as again, caplog.at_level(logging.WARNING):
        pub.reconfigure(cfg, cfg, selectors.DefaultSelector())
    assert pub.sinks == made and again == []  # the capture sink kept, stdout not made
    assert caplog.records[-1].message == "SIGHUP: stdout stays off: it failed earlier in this run"


def test_self_metrics_of_several_sinks_are_summed_but_the_oldest_timestamp() -> None:
    assert combine([{"graphite_buffered": 2, "spool_oldest_timestamp": 50.0},
                    {"graphite_buffered": 3, "spool_oldest_timestamp": 40.0},
                    {"graphite_dropped": 1}]) == {
        "graphite_buffered": 5, "spool_oldest_timestamp": 40.0, "graphite_dropped": 1}


def test_registrations_change_the_selector_only_when_what_is_wanted_changes() -> None:
    sel, regs, owner = selectors.DefaultSelector(), Registrations(), object()
    a, b = socket.socketpair()
    try:
        regs.update(sel, owner, (a, selectors.EVENT_READ), "x")
        assert sel.get_key(a).events == selectors.EVENT_READ
        regs.update(sel, owner, (a, selectors.EVENT_READ | selectors.EVENT_WRITE), "x")
        assert sel.get_key(a).events == selectors.EVENT_READ | selectors.EVENT_WRITE
        regs.update(sel, owner, (b, selectors.EVENT_READ), "y")  # another socket: moved
        assert list(sel.get_map()) == [b.fileno()] and sel.get_key(b).data == "y"
        regs.update(sel, owner, None, "y")
        assert not sel.get_map()
        regs.update(sel, owner, (a, selectors.EVENT_READ), "x")
        regs.drop(sel, owner)
        regs.drop(sel, owner)  # twice: nothing left to drop
        assert not sel.get_map()
    finally:
        a.close()
        b.close()
