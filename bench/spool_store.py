"""Which storage for the spool: append-only segment files or sqlite3 in WAL mode?

Writes 100,000 Graphite lines a second for ``--seconds`` (in batches of a tenth
of a second, as the spooler does), then drains them all, and prints for each
store the CPU it took as a share of one core while writing at that rate, and
how many lines a second it drains (which must be at least 10x the production
rate). Then the whole path with carbon down: the supervisor's side of a spooled
destination (spool_channel.py) sending 100,000 lines a second to a real spooler
process, which writes them to its spool; the spooler's CPU as a share of a core.
Run: ``.venv/bin/python bench/spool_store.py [--seconds 10]``.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import selectors
import socket
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from vpartcollect.config import Endpoint
from vpartcollect.output.metrics import Metric
from vpartcollect.output.sinks.spool import Spool
from vpartcollect.output.sinks.spool_channel import SpoolChannel
from vpartcollect.output.sinks.spooler import SpoolSettings

RATE = 100_000  # lines a second to write
BATCH = 10_000  # lines per append: a tenth of a second (the spooler writes each 0.1-1 s)


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def lines(first: int, count: int) -> bytes:
    return b"".join(b"host-%03d.virt.disk_octets-vda.read %d.5 %d\n" % (i % 997, i, 1.8e9 + i)
                    for i in range(first, first + count))


class SqliteStore:
    """The sqlite3 candidate: one row per batch (a blob), WAL, synchronous=NORMAL."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path / "spool.db", isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS batch (id INTEGER PRIMARY KEY, "
                        "lines INTEGER, oldest REAL, payload BLOB)")

    def append(self, payload: bytes, count: int, oldest: float) -> None:
        self.db.execute("INSERT INTO batch (lines, oldest, payload) VALUES (?, ?, ?)",
                        (count, oldest, payload))

    def drain(self) -> int:
        drained = 0
        while True:
            row = self.db.execute("SELECT id, payload FROM batch ORDER BY id LIMIT 1").fetchone()
            if row is None:
                return drained
            drained += row[1].count(b"\n")
            self.db.execute("DELETE FROM batch WHERE id = ?", (row[0],))


class SegmentStore:
    """The segment-file candidate (what vpartcollect uses)."""

    def __init__(self, path: Path) -> None:
        self.spool = Spool(path / "spool", max_bytes=1 << 40, keep_seconds=0)

    def append(self, payload: bytes, count: int, oldest: float) -> None:
        self.spool.append(payload, count, oldest)

    def drain(self) -> int:
        drained = 0
        while (rec := self.spool.next_batch()) is not None:
            drained += rec.payload.count(b"\n")
            self.spool.handed(rec)
        return drained


def measure(name: str, make: Callable[[Path], SqliteStore | SegmentStore],
            seconds: float) -> None:
    payloads = [lines(i * BATCH, BATCH) for i in range(int(RATE / BATCH * seconds))]
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        store = make(Path(tmp))
        before, started = cpu(), time.monotonic()
        for i, payload in enumerate(payloads):
            store.append(payload, BATCH, 1.8e9 + i)
            # Paced at RATE: sleeping between batches, as a spooler fed by ticks does.
            time.sleep(max(0.0, started + (i + 1) * BATCH / RATE - time.monotonic()))
        write_cpu = cpu() - before
        before, t0 = cpu(), time.monotonic()
        drained = store.drain()
        took = time.monotonic() - t0
        assert drained == len(payloads) * BATCH
    print(f"{name:9s} write {RATE:,} lines/s: {write_cpu / seconds:6.1%} of a core; "
          f"drain {drained / took:12,.0f} lines/s ({drained / took / RATE:.0f}x the "
          f"production rate; {cpu() - before:.2f} s CPU)")


def process_cpu(pid: int) -> float:
    """CPU seconds of a process (utime + stime), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_spooler(seconds: float) -> None:
    """A real spooler process (carbon down: everything goes to disk) fed at RATE."""
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        with socket.socket() as closed:  # a port nobody listens on: carbon is down
            closed.bind(("127.0.0.1", 0))
            port = closed.getsockname()[1]
        settings = SpoolSettings(Path(tmp) / "spool", 1 << 40, 50_000.0, 100_000, 30.0, 5.0)
        channel = SpoolChannel(Endpoint("127.0.0.1", port), settings)
        channel.poll()  # starts the spooler
        sel = selectors.DefaultSelector()
        batch = [Metric(f"host-{i % 997:03d}.virt.disk_octets-vda.read", i + 0.5, 1.8e9 + i)
                 for i in range(BATCH)]
        time.sleep(1)  # its start-up is not what it costs to run
        before, started = process_cpu(channel.pid), time.monotonic()
        for i in range(int(RATE / BATCH * seconds)):
            channel.write(batch)
            while channel.outbox:  # what the supervisor's loop does when the socket is full
                want = channel.interest()
                assert want is not None
                sel.register(want[0], want[1])
                sel.select(0.01)
                sel.unregister(want[0])
                channel.on_ready(selectors.EVENT_WRITE | selectors.EVENT_READ)
            time.sleep(max(0.0, started + (i + 1) * BATCH / RATE - time.monotonic()))
        time.sleep(1.5)
        took = process_cpu(channel.pid) - before
        channel.on_ready(selectors.EVENT_READ)  # its latest report
        spooled = channel.report.get("spooled", 0)
        channel.finish(time.monotonic() + 5)
    print(f"spooler   write {RATE:,} lines/s: {took / (seconds + 1):6.1%} of a core "
          f"(the whole process: frames in, batches to disk; {spooled:,.0f} lines spooled)")


def main() -> None:
    logging.basicConfig(level=logging.ERROR)  # the spooler says carbon is down: it is
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    measure("segments", SegmentStore, args.seconds)
    measure("sqlite", SqliteStore, args.seconds)
    measure_spooler(args.seconds)


if __name__ == "__main__":
    main()
