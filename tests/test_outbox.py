"""The supervisor's end of a control pipe: never blocks, keeps what the pipe does not take.

Real pipes: the reader is the test (reading, or not, like a stopped worker).
"""

from __future__ import annotations

import os
import selectors
from collections.abc import Iterator

import pytest

from vpartcollect import wire
from vpartcollect.outbox import Outbox
from vpartcollect.slot import Slot


@pytest.fixture
def pipe() -> Iterator[tuple[int, Outbox]]:
    r, w = os.pipe()
    box = Outbox(w)
    try:
        yield r, box
    finally:
        box.close()
        os.close(r)


def drain(fd: int) -> bytes:
    os.set_blocking(fd, False)
    got = b""
    while True:
        try:
            chunk = os.read(fd, 1 << 20)
        except BlockingIOError:
            return got
        if not chunk:
            return got
        got += chunk


SKIP = [f"00000000-0000-4000-8000-{i:012x}" for i in range(3000)]


def big_tick() -> bytes:
    # 3,000 skipped domains: ~114 KB, more than a pipe holds (64 KB by default).
    return wire.encode(wire.Tick(1.0, SKIP))


def test_a_small_frame_goes_at_once(pipe: tuple[int, Outbox]) -> None:
    r, box = pipe
    frame = wire.encode(wire.Tick(5.0))
    box.send(frame, now=10.0)
    assert box.waiting == 0 and box.waiting_since is None and box.interest() is None
    assert drain(r) == frame


def test_a_frame_larger_than_the_pipe_waits_without_blocking(pipe: tuple[int, Outbox]) -> None:
    r, box = pipe
    frame = big_tick()
    assert len(frame) > 100_000
    box.send(frame, now=10.0)  # nobody reads: returns anyway
    assert 0 < box.waiting < len(frame)
    assert box.waiting_since == 10.0
    assert box.interest() == (box.fd, selectors.EVENT_WRITE)
    got = b""
    while box.waiting:  # the reader takes some; the selector says the pipe takes more
        got += drain(r)
        box.on_ready(selectors.EVENT_WRITE)
    got += drain(r)
    assert got == frame  # whole, in order
    assert box.waiting_since is None and box.interest() is None


def test_a_reader_gone_takes_nothing_and_nothing_waits() -> None:
    r, w = os.pipe()
    box = Outbox(w)
    os.close(r)  # the worker died
    box.send(big_tick(), now=1.0)  # EPIPE (SIGPIPE is ignored by Python): no raise
    assert box.waiting == 0 and box.interest() is None
    box.close()


def test_close_lets_the_selector_go_first_and_drops_what_waits(pipe: tuple[int, Outbox]) -> None:
    _r, box = pipe
    seen: list[int] = []
    box.on_close = lambda: seen.append(box.fd)
    fd = box.fd
    box.send(big_tick(), now=1.0)
    box.close()
    assert seen == [fd] and box.fd == -1 and box.waiting == 0 and box.interest() is None
    box.on_ready(selectors.EVENT_WRITE)  # a stale event of the same select(): nothing
    box.close()  # twice: nothing
    assert seen == [fd]


def test_a_slot_with_its_tick_unread_past_the_limit_is_stuck(pipe: tuple[int, Outbox]) -> None:
    r, box = pipe
    slot = Slot(0, pid=os.getpid(), ctl=box)
    slot.send(wire.Tick(1.0, SKIP), now=100.0)
    assert not slot.unread(105.0, 5.2)
    assert slot.unread(105.3, 5.2)
    while box.waiting:
        drain(r)
        box.on_ready(selectors.EVENT_WRITE)
    assert not slot.unread(1000.0, 5.2)  # all taken: not stuck however long it works
    slot.ctl = None  # the fixture closes it
