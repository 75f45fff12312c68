"""Deadlines on libvirt calls, and the exact count of those libvirtd still runs."""

from __future__ import annotations

import threading
import time

import pytest

from vpartcollect.calls import CallKind
from vpartcollect.worker.guard import Abandoned, Guard


def test_guard_counts_abandoned_calls_until_they_return() -> None:
    guard = Guard()
    assert guard.run(CallKind.STATS, ["a"], 1.0, lambda: 42) == 42
    release = threading.Event()
    with pytest.raises(Abandoned) as abandoned:
        guard.run(CallKind.STATS, ["a", "b"], 0.05, release.wait)
    assert "stats of 2 domain(s)" in str(abandoned.value)
    with pytest.raises(Abandoned):
        guard.run(CallKind.LIST, [], 0.05, release.wait)
    with pytest.raises(Abandoned):
        guard.run(CallKind.DESCRIBE, ["c"], 0.05, release.wait)
    assert len(guard.outstanding()) == 3 and guard.busy_with(CallKind.LIST)
    # Only calls that involve QEMU say anything about the domains in them.
    assert guard.involving() == ({"a", "b"}, set())
    assert "3 call(s) left in libvirtd" in repr(guard)
    release.set()
    time.sleep(0.05)
    back = guard.returned()
    assert sorted(c.kind.value for c in back) == ["describe", "list", "stats"]
    assert all(c.finished - c.started >= 0.05 for c in back)
    assert all("returned after" in repr(c) for c in back)
    assert guard.outstanding() == [] and not guard.busy_with(CallKind.LIST)
    assert guard.returned() == []  # each is reported once


def test_a_call_alone_in_its_hang_names_its_domain() -> None:
    guard = Guard()
    release = threading.Event()
    with pytest.raises(Abandoned):
        guard.run(CallKind.FROZEN, ["x"], 0.05, release.wait)
    assert guard.involving() == ({"x"}, {"x"})
    release.set()


def test_calls_caught_by_frozen_qemus_are_the_monitor_calls_on_them() -> None:
    """Only a call that waits on a monitor can be caught by a QEMU freezing: a listing and
    a frozen QEMU's own calls (its lock, no monitor) are libvirtd's to answer."""
    guard = Guard()
    release = threading.Event()
    for kind, uuids in ((CallKind.LIST, []), (CallKind.FROZEN, ["b"]),
                        (CallKind.STATS, ["A", "c"]), (CallKind.STATS, ["c"])):
        with pytest.raises(Abandoned):
            guard.run(kind, uuids, 0.01, release.wait)
    assert guard.caught_by(set()) == 0
    assert guard.caught_by({"b"}) == 0
    assert guard.caught_by({"a"}) == 1  # uuids as /proc's look keeps them: lower case
    assert guard.caught_by({"a", "c"}) == 2
    release.set()
    time.sleep(0.05)
    assert guard.caught_by({"a", "b", "c"}) == 0  # returned: their threads are free


def test_guard_knows_which_connection_a_stuck_call_holds() -> None:
    guard = Guard()
    old, new = object(), object()
    release = threading.Event()
    with pytest.raises(Abandoned):
        guard.run(CallKind.STATS, ["a"], 0.05, release.wait, conn=old)
    assert guard.run(CallKind.STATS, ["b"], 1.0, lambda: 1, conn=new) == 1
    assert guard.in_use(old) and not guard.in_use(new)
    release.set()
    time.sleep(0.05)
    assert not guard.in_use(old)  # the worker may close it now


def test_guard_passes_exceptions_through() -> None:
    def boom() -> None:
        raise ValueError("libvirt said no")

    with pytest.raises(ValueError, match="libvirt said no"):
        Guard().run(CallKind.STATS, [], 1.0, boom)


def helpers() -> int:
    return sum(t.name == "libvirt-call" for t in threading.enumerate())


def test_calls_share_helper_threads_but_never_with_a_stuck_call() -> None:
    guard = Guard()
    before = helpers()
    assert len({guard.run(CallKind.STATS, [], 1.0, threading.current_thread)
                for _ in range(50)}) == 1  # one thread served them all, one after another
    release = threading.Event()
    stuck: list[threading.Thread] = []

    def hang() -> None:
        stuck.append(threading.current_thread())
        release.wait()

    for _ in range(4):  # four hangs at once: each holds a thread of its own
        with pytest.raises(Abandoned):
            guard.run(CallKind.STATS, ["a"], 0.02, hang)
    assert len(set(stuck)) == 4
    fresh = guard.run(CallKind.LIST, [], 1.0, threading.current_thread)
    assert fresh not in stuck  # the next call does not queue behind a stuck one
    release.set()
    deadline = time.monotonic() + 2
    while guard.outstanding() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    # Back from the hang, the extra threads end: at most KEEP wait for the next call.
    assert helpers() - before <= Guard.KEEP
    assert guard.run(CallKind.STATS, [], 1.0, lambda: 7) == 7
