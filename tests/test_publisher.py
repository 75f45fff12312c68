"""The data path without any fork: samples in, lines out; reload and exit of the outputs."""

from __future__ import annotations

import os
import selectors
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
from listener import Listener

from vpartcollect import wire
from vpartcollect.config import build
from vpartcollect.output.metrics import Metric
from vpartcollect.output.publisher import Publisher
from vpartcollect.output.sinks.factory import same_spool
from vpartcollect.output.sinks.graphite import GraphiteSink
from vpartcollect.output.sinks.spool_channel import SpoolChannel
from vpartcollect.output.sinks.stdout import StdoutSink

STATS: wire.Stats = {"state.state": 1, "cpu.time": 0, "block.count": 1, "block.0.name": "vda",
                     "block.0.rd.bytes": 0, "balloon.current": 1024}


def results(tick: float, cpu: int, rd: int) -> wire.Results:
    stats = {**STATS, "cpu.time": cpu, "block.0.rd.bytes": rd}
    return wire.Results(tick, [wire.DomainSample("u1", "vm1", "virt-0", False, stats, tick)])


def test_samples_become_lines_with_rates_from_the_second(
        capfd: pytest.CaptureFixture[str]) -> None:
    pub = Publisher(build({"hostname": "h", "extra_stats": ["cpu_util"]}))
    pub.samples(0, results(100.0, 0, 0), ncpus=2)
    first = capfd.readouterr().out
    assert "vm1.virt.memory-total 1048576 100\n" in first
    assert "disk_octets" not in first  # a counter's first sample gives no rate
    pub.samples(0, results(102.0, 2 * 10**9, 4096), ncpus=2)
    second = capfd.readouterr().out
    assert "vm1.virt.disk_octets-vda.read 2048 102\n" in second
    assert "vm1.virt.virt_cpu_total 1000000000 102\n" in second
    assert "vm1.virt.percent-virt_cpu_total 50 102\n" in second


def test_silent_samples_prime_rates_and_write_nothing(capfd: pytest.CaptureFixture[str]) -> None:
    pub = Publisher(build({"hostname": "h"}))
    pub.samples(0, results(100.0, 0, 0), ncpus=1, silent=True)
    assert capfd.readouterr().out == ""
    pub.samples(0, results(101.0, 0, 100), ncpus=1)
    assert "vm1.virt.disk_octets-vda.read 100 101\n" in capfd.readouterr().out


def test_own_metrics_and_forgetting(capfd: pytest.CaptureFixture[str]) -> None:
    pub = Publisher(build({"hostname": "h"}))
    pub.samples(1, results(100.0, 0, 0), ncpus=1)
    pub.instance_done(1, 100.0, {"domains": 1, "blocked_calls": 0})
    pub.new_tick(101.0, pub.tracked())
    out = capfd.readouterr().out
    assert "h.vpartcollect-virt-1.domains 1 100\n" in out
    assert "h.vpartcollect.tracked_domains 1 101\n" in out
    assert pub.forget_older_than(200.0) == {"u1"} and pub.tracked() == 0


def test_reload_keeps_queued_graphite_lines_when_bounds_change() -> None:
    cfg = build({"graphite": ["127.0.0.1:9"], "graphite_buffer": 1000})  # nobody listens
    pub, sel = Publisher(cfg), selectors.DefaultSelector()
    sink = pub.sinks[0]
    assert isinstance(sink, GraphiteSink)  # no spool_dir: lines wait in memory
    sink.write([Metric(f"a.m{i}", float(i), 1700000000 + i) for i in range(500)])
    bigger = build({"graphite": ["127.0.0.1:9"], "graphite_buffer": 5000,
                    "graphite_resend_seconds": 60})
    pub.reconfigure(cfg, bigger, sel)
    assert pub.sinks == [sink] and sink.buffered == 500 and sink.dropped == 0
    assert (sink.max_lines, sink.resend_seconds) == (5000, 60)
    smaller = build({"graphite": ["127.0.0.1:9"], "graphite_buffer": 200})
    pub.reconfigure(bigger, smaller, sel)
    assert sink.buffered == 200 and sink.dropped == 300  # the oldest, counted
    pub.reconfigure(smaller, build({"graphite": ["127.0.0.1:10"]}), sel)
    assert pub.sinks[0] is not sink  # a destination that is gone is closed


def test_finish_sends_everything_then_closes() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    got = bytearray()

    def receive() -> None:  # a plain reader standing in for carbon: it only reads
        conn, _ = server.accept()
        while chunk := conn.recv(65536):
            got.extend(chunk)
        conn.close()

    reader = threading.Thread(target=receive)
    reader.start()
    pub = Publisher(build({"graphite": [f"127.0.0.1:{port}"], "stdout": False,
                           "flush_timeout": 5}))
    pub.emit([Metric(f"a.m{i}", float(i), 1700000000) for i in range(1000)])
    pub.finish(selectors.DefaultSelector())
    reader.join(5)
    server.close()
    lines = bytes(got).decode().splitlines()
    assert len(lines) == 1000 and lines[-1] == "a.m999 999 1700000000"
    assert pub.sinks[0].interest() is None  # closed



def test_a_closed_graphite_socket_leaves_the_selector_first() -> None:
    """Carbon closes the connection: the sink closes its socket while handling that. The
    next pipe or socket the loop opens in the same pass gets the same descriptor number;
    registering it must not find the dead socket still registered (a KeyError that
    ended the collector and lost what was queued)."""
    server = socket.create_server(("127.0.0.1", 0))
    pub = Publisher(build({"graphite": [f"127.0.0.1:{server.getsockname()[1]}"],
                           "stdout": False}))
    sel, sink = selectors.DefaultSelector(), pub.sinks[0]
    assert isinstance(sink, GraphiteSink)
    pub.register(sel)
    conn, _ = server.accept()
    while sink.connecting:  # finish connecting, as the loop would
        for key, mask in sel.select(1):
            pub.on_ready(key.data[1], mask)
        pub.register(sel)
    assert sink.sock is not None
    number = sink.sock.fileno()
    pub.emit([Metric("a.m", 1.0, 1700000000)])
    conn.close()
    server.close()
    for key, mask in sel.select(1):  # carbon went away: read and write both fail
        pub.on_ready(key.data[1], mask)
    assert sink.sock is None and sink.buffered == 1  # the line waits for the next carbon
    r, w = os.pipe()
    try:
        assert number in (r, w)
        sel.register(r, selectors.EVENT_READ)  # a new worker's pipe, say
        sel.register(w, selectors.EVENT_WRITE)
    finally:
        os.close(r)
        os.close(w)


def test_a_destination_removed_by_a_reload_is_closed() -> None:
    """Two destinations, a reload lists one: the other used to be kept open (its socket,
    with a spool its spooler) though nothing wrote to it any more."""
    servers = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
    ends = [f"127.0.0.1:{s.getsockname()[1]}" for s in servers]
    old = build({"graphite": ends, "stdout": False})
    pub, sel = Publisher(old), selectors.DefaultSelector()
    kept, removed = pub.sinks
    assert isinstance(kept, GraphiteSink) and isinstance(removed, GraphiteSink)
    pub.register(sel)
    conns = [s.accept()[0] for s in servers]
    while kept.connecting or removed.connecting:
        for key, mask in sel.select(1):
            pub.on_ready(key.data[1], mask)
        pub.register(sel)
    pub.reconfigure(old, build({"graphite": ends[:1], "stdout": False}), sel)
    assert pub.sinks == [kept] and kept.sock is not None
    assert removed.sock is None  # closed, out of the selector
    conns[1].settimeout(2)
    assert conns[1].recv(1) == b""  # the removed carbon sees the connection end
    for c in conns + servers:
        c.close()


def test_own_metrics_go_on_after_the_clock_steps_back(
        capfd: pytest.CaptureFixture[str]) -> None:
    """After a -1 h step every new tick is older than the last counted one: the
    instance's own metrics used to stop for an hour while the domains' went on. A late
    Done of a tick already counted is still never written twice."""
    pub = Publisher(build({"hostname": "h"}))
    pub.instance_done(1, 7200.0, {"domains": 1})
    pub.instance_done(1, 7200.0, {"domains": 1})  # a replay after a reload
    pub.clock_stepped()
    pub.instance_done(1, 3601.0, {"domains": 2})
    pub.instance_done(1, 7200.0, {"domains": 3})  # the old era's, late
    pub.instance_done(1, 3602.0, {"domains": 4})
    lines = [line for line in capfd.readouterr().out.splitlines() if ".domains " in line]
    assert lines == ["h.vpartcollect-virt-1.domains 1 7200", "h.vpartcollect-virt-1.domains 2 3601",
                     "h.vpartcollect-virt-1.domains 4 3602"], lines


def test_a_new_flush_timeout_keeps_the_spooled_destination(tmp_path: Path) -> None:
    """flush_timeout is no spool setting: changing only it used to restart every spooler
    (and close its carbon connections)."""
    old = build({"graphite": ["127.0.0.1:9"], "spool_dir": str(tmp_path), "flush_timeout": 5})
    new = build({"graphite": ["127.0.0.1:9"], "spool_dir": str(tmp_path), "flush_timeout": 9})
    assert same_spool(old, new)
    pub = Publisher(old)
    sink = pub.sinks[0]
    assert isinstance(sink, SpoolChannel)
    pub.reconfigure(old, new, selectors.DefaultSelector())
    assert pub.sinks[0] is sink and sink.settings.flush_timeout == 9
    sink.close()


def lines_of(n: int, first: int = 0) -> list[Metric]:
    return [Metric(f"a.m{i}", float(i), 1700000000) for i in range(first, first + n)]


def read_all(fd: int, got: bytearray, after: float) -> threading.Thread:
    """A slow reader of a real pipe: it starts reading ``after`` seconds from now."""
    def run() -> None:
        time.sleep(after)
        while chunk := os.read(fd, 65536):
            got.extend(chunk)
    reader = threading.Thread(target=run)
    reader.start()
    return reader


def test_stdout_beside_graphite_is_flushed_at_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    """run --once with Graphite and stdout: what a slow pipe reader had not taken when the
    run ended (beyond the pipe's space) used to be lost."""
    carbon = Listener()
    r, w = os.pipe()
    monkeypatch.setattr(sys, "stdout", open(w, "w", closefd=False))  # noqa: SIM115
    pub = Publisher(build({"graphite": [f"127.0.0.1:{carbon.port}"], "flush_timeout": 5,
                           "stdout": True}))
    got = bytearray()
    pub.emit(lines_of(5000))  # ~130 KB: more than the pipe holds
    reader = read_all(r, got, 0.3)
    pub.finish(selectors.DefaultSelector())
    os.close(w)
    reader.join(10)
    os.close(r)
    assert bytes(got).decode().splitlines() == [f"a.m{i} {i} 1700000000" for i in range(5000)]


def test_stdout_lines_queued_beside_graphite_go_first_when_it_is_removed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A reload removes every Graphite destination: stdout blocks again, and what waited
    for its reader used to be skipped by the later lines (and never written)."""
    old = build({"graphite": ["127.0.0.1:9"], "flush_timeout": 1, "stdout": True})
    r, w = os.pipe()
    monkeypatch.setattr(sys, "stdout", open(w, "w", closefd=False))  # noqa: SIM115
    pub, sel = Publisher(old), selectors.DefaultSelector()
    pub.emit(lines_of(5000))
    new = build({"flush_timeout": 1, "stdout": True})
    pub.reconfigure(old, new, sel)
    got = bytearray()
    reader = read_all(r, got, 0.2)
    pub.emit(lines_of(10, 5000))
    pub.finish(sel)
    os.close(w)
    reader.join(10)
    os.close(r)
    assert bytes(got).decode().splitlines() == [f"a.m{i} {i} 1700000000" for i in range(5010)]


def test_stdout_lines_queued_before_a_format_change_are_written(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A reload changes the format: the lines queued for the reader in the old one used to
    be dropped with the old sink."""
    old = build({"graphite": ["127.0.0.1:9"], "flush_timeout": 1, "stdout": True})
    r, w = os.pipe()
    monkeypatch.setattr(sys, "stdout", open(w, "w", closefd=False))  # noqa: SIM115
    got = bytearray()
    pub, sel = Publisher(old), selectors.DefaultSelector()
    stdout = pub.sinks[-1]
    assert isinstance(stdout, StdoutSink) and stdout.fd == w and stdout.spare
    pub.emit(lines_of(5000))
    pub.reconfigure(old, build({"graphite": ["127.0.0.1:9"], "flush_timeout": 1,
                                "stdout": True, "format": "json"}), sel)
    reader = read_all(r, got, 0.2)
    pub.emit(lines_of(1, 5000))
    pub.finish(sel)
    os.close(w)
    reader.join(10)
    os.close(r)
    out = bytes(got).decode().splitlines()
    assert out[:5000] == [f"a.m{i} {i} 1700000000" for i in range(5000)]
    assert len(out) == 5001 and '"path":"a.m5000"' in out[-1]


def test_stdout_that_caught_up_between_writes_is_not_warned_of_later(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Beside Graphite, stdout's reader takes what waited (a poll of the loop), then the
    next batch waits a moment: no "lines have waited" warning (the wait was counted from
    the first, long-finished one)."""
    monkeypatch.setattr("vpartcollect.output.sinks.stdout.STALL_WARN", 0.3)
    r, w = os.pipe()
    try:
        sink = StdoutSink(fd=w, spare=True)
        sink.write(lines_of(5000))  # more than a pipe holds: some wait
        assert sink.waiting
        while sink.waiting:  # the reader takes everything; the loop's polls hand it on
            os.read(r, 1 << 20)
            sink.poll()
        time.sleep(0.4)
        with caplog.at_level("WARNING"):
            sink.write(lines_of(5000))  # waits again, for a moment only
        assert [rec.message for rec in caplog.records] == []
    finally:
        os.close(r)
        os.close(w)
