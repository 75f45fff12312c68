"""The spool on disk: checksummed batches, bounded, drained in order, robust to tears."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from vpartcollect.output.sinks import segments
from vpartcollect.output.sinks.segments import Record, Skipped
from vpartcollect.output.sinks.spool import Spool


def batch(first: int, count: int) -> tuple[bytes, int, float]:
    lines = b"".join(b"a.b.m%d %d %d\n" % (i, i, 1700000000 + i)
                     for i in range(first, first + count))
    return lines, count, float(1700000000 + first)


def drain(spool: Spool) -> list[bytes]:
    out = []
    while (rec := spool.next_batch()) is not None:
        out.append(rec.payload)
        spool.handed(rec)
    return out


def test_records_round_trip_and_garbage_is_skipped_and_counted() -> None:
    one, two = segments.encode(b"x 1 1\n", 1, 1.0), segments.encode(b"y 2 2\ny 3 3\n", 2, 2.0)
    data = one + b"\x00garbage" + segments.MAGIC + b"torn" + two + two[:10]
    items = list(segments.decode(data))
    assert [type(i) for i in items] == [Record, Skipped, Record, Skipped]
    assert isinstance(items[0], Record) and items[0].payload == b"x 1 1\n"
    assert isinstance(items[2], Record) and items[2].lines == 2
    assert isinstance(items[1], Skipped) and items[1].count == len(b"\x00garbage") + 8
    assert isinstance(items[3], Skipped) and items[3].count == 10


def test_a_flipped_bit_fails_the_checksum() -> None:
    rec = bytearray(segments.encode(b"x 1 1\n", 1, 1.0))
    rec[-2] ^= 0x01
    assert [type(i) for i in segments.decode(bytes(rec))] == [Skipped]


def test_batches_come_back_in_order_across_segments(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", max_bytes=10**9, keep_seconds=0, segment_bytes=4096)
    sent = [batch(i * 50, 50) for i in range(40)]
    for payload, lines, oldest in sent:
        spool.append(payload, lines, oldest)
    assert len(segments.segments(tmp_path / "s")) > 5
    stats = spool.stats()
    assert stats.lines == 2000 and stats.oldest == 1700000000.0
    assert drain(spool) == [p for p, _, _ in sent]
    spool.release()
    assert spool.stats().lines == 0
    assert len(segments.segments(tmp_path / "s")) == 1  # the one still being written


def test_full_spool_drops_the_oldest_and_counts_them(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", max_bytes=20_000, segment_bytes=4096)
    for i in range(100):
        spool.append(*batch(i * 10, 10))
    stats = spool.stats()
    assert stats.bytes <= 20_000 + 4096 and stats.dropped > 0
    assert stats.lines + stats.dropped == 1000
    got = b"".join(drain(spool)).decode().splitlines()
    assert got[-1].startswith("a.b.m999 ") and len(got) == stats.lines  # the newest kept


def test_a_later_run_finds_the_spool_and_skips_a_torn_end(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", max_bytes=10**9)
    for i in range(10):
        spool.append(*batch(i * 10, 10))
    spool.close()
    newest = segments.segments(tmp_path / "s")[-1]
    with open(newest, "r+b") as fh:  # power loss mid-write: the last record is torn
        fh.truncate(os.path.getsize(newest) - 7)
    with open(newest, "ab") as fh:  # and garbage after it
        fh.write(b"\xff" * 100)
    again = Spool(tmp_path / "s", max_bytes=10**9)
    assert again.stats().lines == 90 and again.corrupt_bytes > 100
    got = b"".join(drain(again)).decode().splitlines()
    assert len(got) == 90 and got[0].startswith("a.b.m0 ")
    again.append(*batch(500, 5))  # new lines go to a new segment, never after the tear
    assert b"".join(drain(again)).decode().splitlines()[0].startswith("a.b.m500 ")


def test_a_dead_connection_gets_the_last_batches_again(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", max_bytes=10**9, keep_seconds=30, segment_bytes=2048)
    for i in range(20):
        spool.append(*batch(i * 10, 10))
    first = drain(spool)
    assert len(first) == 20 and spool.stats().lines == 0
    spool.rewind(time.monotonic())  # carbon died: what it may not have read comes again
    assert spool.stats().lines == 200
    assert drain(spool) == first


def test_handed_on_segments_are_removed_after_the_keep_window(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", max_bytes=10**9, keep_seconds=0.2, segment_bytes=2048)
    for i in range(20):
        spool.append(*batch(i * 10, 10))
    drain(spool)
    kept = len(segments.segments(tmp_path / "s"))
    assert kept > 1  # within the keep window: still on disk
    time.sleep(0.3)
    spool.release()
    assert len(segments.segments(tmp_path / "s")) == 1


@pytest.mark.parametrize("size", [1, 100, 4000])
def test_every_line_comes_back_once(tmp_path: Path, size: int) -> None:
    spool = Spool(tmp_path / "s", max_bytes=10**9, keep_seconds=0, segment_bytes=size * 40)
    got: list[bytes] = []
    for i in range(30):
        spool.append(*batch(i * size, size))
        if i % 7 == 3:
            got += drain(spool)  # drained while it is written
    got += drain(spool)
    lines = b"".join(got).decode().splitlines()
    assert len(lines) == len(set(lines)) == 30 * size
