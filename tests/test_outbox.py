"""The supervisor's end of a control pipe: never blocks, keeps what the pipe does not take.

Real pipes: the reader is the test (reading, or not, like a stopped worker).
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
from collections.abc import Iterator

import pytest

from vpartcollect import children, wire
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
    assert box.waiting == 0 and box.interest() is None
    assert box.unread_since() == 10.0 and box.in_pipe() == len(frame)  # not read yet
    assert drain(r) == frame
    assert box.unread_since() is None  # read: nothing for the watchdog


def test_a_small_tick_nobody_reads_is_seen_unread(pipe: tuple[int, Outbox]) -> None:
    """The review's case: a tick of a few bytes goes into the pipe at once; a worker that
    never reads it (SIGSTOPped while idle) must still be seen, from what the pipe holds."""
    r, box = pipe
    box.send(wire.encode(wire.Tick(5.0)), now=10.0)
    assert box.unread_since() == 10.0
    box.send(wire.encode(wire.Tick(6.0)), now=11.0)  # still unread: since the first
    assert box.unread_since() == 10.0
    drain(r)
    box.send(wire.encode(wire.Tick(7.0)), now=12.0)  # all read before: since this one
    assert box.unread_since() == 12.0


def test_a_frame_larger_than_the_pipe_waits_without_blocking(pipe: tuple[int, Outbox]) -> None:
    r, box = pipe
    frame = big_tick()
    assert len(frame) > 100_000
    box.send(frame, now=10.0)  # nobody reads: returns anyway
    assert 0 < box.waiting < len(frame)
    assert box.unread_since() == 10.0
    assert box.interest() == (box.fd, selectors.EVENT_WRITE)
    got = b""
    while box.waiting:  # the reader takes some; the selector says the pipe takes more
        got += drain(r)
        box.on_ready(selectors.EVENT_WRITE)
    got += drain(r)
    assert got == frame  # whole, in order
    assert box.unread_since() is None and box.interest() is None


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
    assert slot.unread(105.3, 5.2)  # all written, not all read: the pipe holds the rest
    drain(r)
    assert not slot.unread(1000.0, 5.2)  # all read: not stuck however long it works
    slot.ctl = None  # the fixture closes it


def test_a_worker_that_leaves_its_tick_unread_is_killed_once() -> None:
    """The review's case: the kill left the unread state behind, so each pass of the
    supervisor's loop killed and counted it again (and select() spun at 0 s) until the
    exit was reaped. A real child stands in for the worker, stopped so it never reads."""
    r, w = os.pipe()
    child = subprocess.Popen(["sleep", "60"], pass_fds=(r,))
    children.register(child.pid, lambda status: None)
    try:
        os.kill(child.pid, signal.SIGSTOP)
        slot = Slot(0, pid=child.pid, ctl=Outbox(w))
        slot.send(wire.Tick(1.0), now=100.0)
        for now in (106.0, 106.1, 106.2):
            slot.kill_if_unread(now, 5.2)
        assert slot.kills == 1 and slot.ctl is None and slot.respawn_now
        assert child.wait(timeout=5) == -signal.SIGKILL
    finally:
        children.exited(child.pid, 0)
        child.kill()
        child.wait()
        os.close(r)
