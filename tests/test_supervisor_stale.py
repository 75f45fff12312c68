"""Supervisor state that outlives its object: stale events, reaped pids, failed forks.

Each test drives the real Supervisor/Slot/SpoolChannel objects with real pipes and
processes; where the fault cannot be produced on demand (fork failing with EAGAIN,
an output closing in the middle of a drain, a worker in D state ignoring SIGKILL) a
FAKE stands in for it and says so.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from runner import DEMO_URI

from vpartcollect import children, preflight, wire
from vpartcollect.config import Config, Endpoint, build
from vpartcollect.output.publisher import OutputClosed
from vpartcollect.output.sinks.spool_channel import SpoolChannel
from vpartcollect.output.sinks.spooler import SpoolSettings
from vpartcollect.preflight import LibvirtProbe
from vpartcollect.slot import Slot
from vpartcollect.supervisor import Supervisor


def config(**over: object) -> Config:
    return build({"connect": DEMO_URI, "instances": 1, "interval": 1.0, "stdout": False,
                  **over})


@pytest.fixture
def stranger() -> Iterator[subprocess.Popen[bytes]]:
    """A live process that is not the supervisor's child: what a reaped worker's pid may
    belong to by the time a stale SIGKILL is sent."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


# -- defect 1: a reload's reconfigure closes a channel whose event is still to come ------
def test_a_closed_spool_channel_ignores_a_stale_event(tmp_path: Path) -> None:
    channel = SpoolChannel(Endpoint("127.0.0.1", 9),
                           SpoolSettings(tmp_path, 1 << 20, 1000.0, 100, 30.0, 2.0))
    assert channel.sock is None  # closed (never started): its event came from before
    channel.on_ready(selectors.EVENT_READ | selectors.EVENT_WRITE)  # no AssertionError
    assert channel.sock is None


def test_the_probe_answer_is_applied_by_the_loop_not_inside_wait() -> None:
    """The URI opened: _probed (run from inside wait()'s loop over one select()) only
    records it; reconfiguring there could close objects whose events follow."""
    sup = Supervisor(config())
    new = config(connect="test:///default")
    probe = LibvirtProbe(new.connect)
    sup.selector.register(probe.fd, selectors.EVENT_READ, ("probe", None))
    sup.probe = (probe, new)
    try:
        deadline = time.monotonic() + 30
        while sup.probe is not None and time.monotonic() < deadline:
            sup.wait(1.0)  # the real wait(): serves the probe's event
            children.reap()
        assert sup.probe is None
        assert sup.cfg.connect == DEMO_URI  # not applied inside wait()
        assert sup.approved is new  # the loop applies it after wait() returns
    finally:
        sup._stop_probe()
        sup.publisher.finish(sup.selector)


# -- defect 5: a worker reaped already sent bad bytes -------------------------------------
def test_bad_bytes_from_a_reaped_worker_kill_nobody(
        stranger: subprocess.Popen[bytes], caplog: pytest.LogCaptureFixture) -> None:
    selector = selectors.DefaultSelector()
    out_r, out_w = os.pipe()
    os.write(out_w, b"\xc1\xc1\xc1 not msgpack")
    os.close(out_w)
    slot = Slot(0, pid=stranger.pid, out=out_r)  # its pid: reaped, now someone else's
    selector.register(out_r, selectors.EVENT_READ, ("worker", slot))
    with caplog.at_level(logging.ERROR):
        assert slot.read(selector) == []
    assert "bad frame" in caplog.text
    slot.close_out(selector)
    time.sleep(0.1)
    assert stranger.poll() is None, "a SIGKILL went to a pid that is not ours"


# -- defect 6: the reload's probe cannot fork ---------------------------------------------
def fake_fork_fails(*_args: object) -> NoReturn:
    """FAKE fork_child: the fault of a host out of processes (EAGAIN) on demand."""
    raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))


def test_a_probe_that_cannot_fork_leaks_no_descriptor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preflight, "fork_child", fake_fork_fails)
    before = open_fds()
    with pytest.raises(OSError):
        LibvirtProbe("test:///default")
    assert open_fds() == before


def test_a_reload_whose_probe_cannot_fork_keeps_the_running_config(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(preflight, "fork_child", fake_fork_fails)
    first = config()
    sup = Supervisor(first, reload=lambda: config(connect="test:///default"))
    try:
        with caplog.at_level(logging.ERROR):
            sup.reload()  # no OSError out of the signal handling
        assert sup.cfg is first and sup.probe is None
        assert "SIGHUP: cannot check libvirt at test:///default" in caplog.text
        assert "keeping the running configuration" in caplog.text
    finally:
        sup.publisher.finish(sup.selector)


# -- defect 9: the drain of an exited worker finds the output closed -----------------------
def test_an_output_closing_in_an_exited_workers_drain_still_retires_the_slot(
        monkeypatch: pytest.MonkeyPatch) -> None:
    sup = Supervisor(config())
    out_r, out_w = os.pipe()
    os.write(out_w, b"whatever it wrote before dying")
    os.close(out_w)
    os.set_blocking(out_r, False)
    slot = sup.slots[0]
    slot.pid, slot.out = 12345, out_r
    sup.selector.register(out_r, selectors.EVENT_READ, ("worker", slot))

    def fake_read_worker(_slot: Slot, alive: bool = True) -> None:
        """FAKE: the stdout reader went away while this worker's last results were emitted."""
        raise OutputClosed("reader gone")

    monkeypatch.setattr(sup, "read_worker", fake_read_worker)
    try:
        with pytest.raises(OutputClosed):
            sup._exited(slot, 0)  # the loop still hears of the closed output
        assert slot.pid == 0 and slot.out == -1  # shutdown() will not wait for it
    finally:
        sup.publisher.finish(sup.selector)


# -- defect 7: a clock step during a reload's handover ----------------------------------
def test_a_clock_step_drops_the_old_clocks_owed_ticks_but_the_one_in_flight() -> None:
    sup = Supervisor(config(interval=10.0))
    old = Slot(0, pid=4242, current=wire.Tick(7_200.0))
    sup.retiring = [old]
    sup.owed = {7_180.0, 7_190.0, 7_200.0}
    try:
        sup.clock_stepped(-3600.0, 3_603.0)
        assert sup.owed == {7_200.0}  # the old worker is still in it: still owed
        assert sup.slots[0].missed_ticks == 2
    finally:
        sup.retiring = []
        sup.publisher.finish(sup.selector)


# -- defect 11: an old worker that SIGKILL does not end ----------------------------------
def test_the_new_workers_go_on_when_a_killed_old_worker_never_exits(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    sup = Supervisor(config())
    old = sup.slots[0]
    proc = subprocess.Popen(["sleep", "60"])  # a real child standing for the old worker
    old.pid, old.current = proc.pid, wire.Tick(100.0)
    children.register(proc.pid, lambda status: sup._exited(old, status))
    # FAKE: a worker in D state (a stat in a hung FUSE mount) does not die of SIGKILL.
    monkeypatch.setattr(Slot, "kill", lambda self, hung: None)
    sup._restart_workers(1, sup.cfg)
    assert sup.retiring == [old] and sup.owed == {100.0}
    new = sup.slots[0]
    try:
        with caplog.at_level(logging.WARNING):
            sup.retire_by = time.monotonic() - 1
            sup.murder_overdue()  # SIGKILL (ignored)
            assert sup.retiring == [old]
            sup.retire_by = time.monotonic() - 1  # an interval later
            sup.murder_overdue()
        assert sup.retiring == [] and [t.ts for t in new.pending] == [100.0]
        assert "did not exit after SIGKILL" in caplog.text
    finally:
        monkeypatch.undo()
        proc.kill()
        proc.wait()
    children.exited(proc.pid, 9)  # its late exit is reaped: harmless
    assert old.pid == 0 and sup.slots == [new] and new.spawn_at == 0.0
    sup.publisher.finish(sup.selector)


# -- defect 12b: a replay's skip list names the slot's partition only --------------------
def test_a_replayed_ticks_skip_list_holds_only_the_new_workers_domains() -> None:
    """300 domains emitted for the tick the old worker was in, tagged virt-0/virt-1; the
    reload goes from 1 to 2 instances. Each new worker's skip list is its own half (plus
    a domain whose tag the supervisor never learnt: skipping it is always safe)."""
    sup = Supervisor(config(instances=1, interval=10.0))
    ts = 7_200.0
    samples = [wire.DomainSample(f"u{i:03}", f"vm{i}", f"virt-{i % 2}", False,
                                 {"state.state": 1}, ts) for i in range(300)]
    for s in samples:
        sup.roster.seen(0, s)
    stranger = wire.DomainSample("u-untold", "vm-x", None, False, {"state.state": 1}, ts)
    sup.publisher.samples(0, wire.Results(ts, [*samples, stranger]), 1)
    sup.slots[0].current = wire.Tick(ts)  # the tick it was in; no worker to wait for
    old_cfg, sup.cfg = sup.cfg, config(instances=2, interval=10.0)
    try:
        sup._restart_workers(2, old_cfg)
        for index, slot in enumerate(sup.slots):
            (tick,) = slot.pending
            assert tick.ts == ts
            assert set(tick.skip) == {s.uuid for s in samples if s.tag == f"virt-{index}"} \
                | {"u-untold"}
            assert len(wire.encode(tick)) < 65536 // 4
    finally:
        sup.publisher.finish(sup.selector)


def test_stale_worker_and_probe_events_are_ignored() -> None:
    """An event served after its object was closed in the same select() does nothing."""
    sup = Supervisor(config())
    try:
        sup._probed()  # the probe was stopped already
        assert Slot(0, pid=0, out=-1).read(sup.selector) == []
    finally:
        sup.publisher.finish(sup.selector)
