"""Graphite output against a real carbon-cache: nothing lost across a restart, never stalled."""

from __future__ import annotations

import logging
import selectors
import signal
import socket
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from carbon import PrivateCarbon, free_port
from nodes import tagged_node
from runner import DEMO_URI, cli_popen, no_traceback, parse_lines

from vpartcollect.config import Endpoint
from vpartcollect.output.metrics import Metric
from vpartcollect.output.sinks.graphite import GraphiteSink

pytestmark = pytest.mark.carbon


def drive(sink: GraphiteSink, until: float, done: object = None) -> None:
    """Run a sink's share of the supervisor loop until ``until`` or it has sent everything."""
    sel = selectors.DefaultSelector()
    while time.monotonic() < until and (sink.buffered or done is None):
        sink.poll()
        want = sink.interest()
        if want is None:
            time.sleep(0.02)
            continue
        sel.register(*want)
        for _key, mask in sel.select(0.05):
            sink.on_ready(mask)
        sel.unregister(want[0])
    sel.close()


def run_collector(args: list[str], seconds: float, actions: dict[float, Callable[[], object]],
                  uri: str = DEMO_URI) -> tuple[list[tuple[str, float, float]], str]:
    """Run the CLI on test-driver domains for ``seconds``; call actions at their offsets."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = cli_popen("run", "--connect", uri, "--instances", "2", "--interval", "1",
                         *args, stdout=out, stderr=err)
        start = time.monotonic()
        todo = sorted(actions.items(), key=lambda a: a[0])
        while time.monotonic() - start < seconds:
            while todo and todo[0][0] <= time.monotonic() - start:
                todo.pop(0)[1]()
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        out.seek(0)
        err.seek(0)
        lines, stderr = parse_lines(out.read()), err.read()
    assert proc.returncode == 0, stderr
    no_traceback(stderr)
    return lines, stderr


def test_carbon_restart_loses_no_point(tmp_path: Path) -> None:
    carbon = PrivateCarbon(tmp_path / "carbon").start()
    try:
        lines, stderr = run_collector(
            ["--graphite", carbon.address, "--stdout"], 40,
            {12.0: carbon.stop, 26.0: carbon.start})
        carbon.settle(lines)
    finally:
        carbon.stop()
    # Every domain sampled through the whole run, carbon's outage included.
    cpu_ticks = Counter(p.split(".")[0] for p, _, _ in lines if p.endswith(".virt_cpu_total"))
    assert len(cpu_ticks) == 10 and min(cpu_ticks.values()) >= 34, cpu_ticks
    missing = carbon.missing(lines)
    stamps = sorted({int(ts) for _, _, ts in lines})
    assert missing == [], (len(missing), stamps[0], stamps[-1], missing[:3], missing[-3:],
                           sorted({m.ts for m in missing}))
    assert "buffering and reconnecting" in stderr and "connected again" in stderr


class FakeStuckCarbon:
    """FAKE carbon: accepts connections and never reads (a fault real carbon won't make)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        for conn in self.conns:
            conn.close()
        self.sock.close()


def test_a_carbon_that_never_reads_delays_nothing(tmp_path: Path) -> None:
    # 200 domains for 30 s: far more than the kernel's socket buffers can swallow.
    uri = tagged_node(tmp_path / "node.xml", [f"virt-{i % 2}" for i in range(200)], "vm-")
    conf = tmp_path / "c.toml"
    conf.write_text("graphite_buffer = 1000000\nflush_timeout = 2\n")
    stuck = FakeStuckCarbon()
    carbon = PrivateCarbon(tmp_path / "carbon").start()
    try:
        lines, stderr = run_collector(
            ["-c", str(conf), "--graphite", f"127.0.0.1:{stuck.port}",
             "--graphite", carbon.address, "--stdout"], 30, {}, uri=uri)
        carbon.settle(lines)
    finally:
        carbon.stop()
        stuck.close()
    stamps = sorted({int(ts) for _, _, ts in lines})
    assert stamps == list(range(stamps[0], stamps[-1] + 1)), "a tick went missing"
    missed = [v for p, v, _ in lines if p.endswith(".missed_ticks")]
    assert max(missed) == 0
    buffered = [v for p, v, _ in lines if p.endswith("vpartcollect.graphite_buffered")]
    assert buffered[-1] > 10000  # the stuck destination's lines wait in its own queue...
    assert carbon.missing(lines) == []  # ...and the healthy one got everything
    assert "lines not sent before exit" in stderr


def test_full_buffer_drops_exactly_the_oldest(tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    sink = GraphiteSink(Endpoint("127.0.0.1", port), max_lines=100, resend_seconds=0)
    base = int(time.time()) - 600
    caplog.set_level(logging.WARNING)
    for i in range(250):  # nobody listens: everything queues
        sink.write([Metric(f"overflow.m{i % 5}", float(i), base + i)])
        sink.poll()
    assert (sink.dropped, sink.buffered) == (150, 100)
    assert sum("buffer full" in r.message for r in caplog.records) == 1  # once per episode
    carbon = PrivateCarbon(tmp_path / "carbon", port=port).start()
    try:
        drive(sink, time.monotonic() + 20, done=True)
        assert sink.buffered == 0
        time.sleep(1.5)
    finally:
        carbon.stop()
        sink.close()
    stored = {ts: v for i in range(5) for ts, v in
              carbon.fetch(f"overflow.m{i}", base, base + 250).items()}
    assert sorted(stored) == [base + i for i in range(150, 250)]
    assert all(stored[base + i] == i for i in range(150, 250))
    assert any("buffer drained; 150 lines were dropped" in r.message for r in caplog.records)
