"""Supervisor against FAKE workers: faults a real worker cannot be made to show on demand.

A real worker never writes garbage to its pipe and does not crash at start-up
on request; these fakes replace ``worker_main`` in the forked child to produce
exactly those faults, and the real supervisor has to cope.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, NoReturn

import pytest
from capture import capture_sinks
from nodes import tagged_node
from runner import DEMO_URI

from vpartcollect import supervisor, wire
from vpartcollect.config import Config, build
from vpartcollect.supervisor import Supervisor
from vpartcollect.ticks import Schedule
from vpartcollect.worker import worker_main
from vpartcollect.worker.link import Link


def run_for(seconds: float, instances: int = 1, sup: Supervisor | None = None) -> Supervisor:
    sup = sup or Supervisor(build({"connect": DEMO_URI, "instances": instances,
                                   "interval": 1.0, "stdout": False}))
    timer = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        assert sup.run() == 0
    finally:
        timer.cancel()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    return sup


def fake_crashing_worker(index: int, cfg: object, ctl_fd: int, out_fd: int,
                         parent: int, seed: object = None, before: object = None) -> NoReturn:
    """FAKE worker: dies at once without hanging."""
    os._exit(3)


def fake_garbage_worker(index: int, cfg: object, ctl_fd: int, out_fd: int,
                        parent: int, seed: object = None, before: object = None) -> NoReturn:
    """FAKE worker: writes bytes that are not a frame, then waits to be killed."""
    os.write(out_fd, b"\xc1\xc1\xc1 not msgpack")
    time.sleep(60)
    os._exit(0)


def test_a_worker_that_keeps_dying_is_respawned_with_backoff(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(supervisor, "worker_main", fake_crashing_worker)
    caplog.set_level(logging.INFO)
    sup = run_for(6.0)
    # Respawn delays 0, 0.5, 1, 2 (, 4): five or six starts in 6 s, not hundreds.
    assert 4 <= sup.slots[0].spawned <= 6
    restarts = [r.message for r in caplog.records if "worker exited" in r.message]
    assert restarts[0].endswith("(exit status 3); restarting in 0.0 s")
    assert len(restarts) == len(set(restarts)), "logged once per change of delay"
    assert "restarting in 2.0 s" in restarts[-1] or "restarting in 4.0 s" in restarts[-1]


def test_garbage_on_a_worker_pipe_kills_that_worker(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(supervisor, "worker_main", fake_garbage_worker)
    caplog.set_level(logging.INFO)
    sup = run_for(3.0)
    bad = [r.message for r in caplog.records if "sent a bad frame" in r.message]
    assert bad and "killing it" in bad[0]
    assert sup.slots[0].spawned >= 2  # and a new one was started, with backoff
    assert sup.slots[0].kills == 0  # not counted as a watchdog kill


def test_every_per_domain_table_is_pruned() -> None:
    with capture_sinks():  # the only output: nothing is written anywhere
        sup = Supervisor(build({"connect": DEMO_URI, "instances": 2, "stdout": False}))
    for slot in sup.slots:  # each worker says it is ready and is given tick 1000
        slot.queue(wire.Tick(1000.0), sup.backlog)
        sup.handle(slot, wire.Hello(slot.index, 0, 1, "test", [], []))
    for i in range(1000):
        slot = sup.slots[i % 2]
        stats: wire.Stats = {"state.state": 1, "cpu.time": i, "block.count": 1,
                             "block.0.name": "vda",
                             "block.0.rd.bytes": i}
        sup.handle(slot, wire.Results(1000.0, [
            wire.DomainSample(f"u{i}", f"vm{i}", "virt-1", i % 3 == 0, stats, 1000.0)]))
        sup.roster.suspect(i % 2, [f"u{i}"])
    assert sup.tracked() == 1000
    sup.handle(sup.slots[0], wire.Done(1000.0, 0.1, 500))
    sup.slots[0].queue(wire.Tick(1100.0), sup.backlog)
    sup.feed(sup.slots[0])
    sup.handle(sup.slots[0], wire.Results(1100.0, [
        wire.DomainSample("u0", "vm0", None, False, {"state.state": 1}, 1100.0)]))
    sup._prune(1050.0)
    assert sup.tracked() == 1  # u0 was sampled again; the 999 others are gone everywhere
    assert sup.roster.tags.keys() == {"u0"} and sup.roster.names.keys() == {"u0"}
    assert sup.roster.suspects_of(0) == [] and sup.roster.suspects_of(1) == []


def test_a_clock_step_realigns_drops_old_ticks_and_opens_a_ledger_era(
        caplog: pytest.LogCaptureFixture) -> None:
    sup = Supervisor(build({"connect": DEMO_URI, "instances": 2, "interval": 10.0,
                            "stdout": False}))
    sup.schedule = Schedule(10.0, 7_195.0)
    assert sup.schedule.due(7_200.0) == 7_200.0
    sample = wire.DomainSample("u0", "vm0", None, False, {"state.state": 1}, 7_200.0)
    sup.publisher.samples(0, wire.Results(7_200.0, [sample]), 1)
    sup.slots[1].queue(wire.Tick(7_200.0), 4)  # a busy worker's tick of the old clock
    with caplog.at_level(logging.WARNING):
        sup.clock_stepped(-3600.0, 3_603.0)
    assert "the wall clock stepped -3600.0 s" in caplog.text
    assert not sup.slots[1].pending and sup.slots[1].missed_ticks == 1
    assert sup.schedule.due(3_603.0) == 3_600.0  # the present tick of the new clock
    assert sup.publisher.ledger.admit("u0", 3_600.0)  # older than 7200: a new era
    assert not sup.publisher.ledger.admit("u0", 7_200.0)  # written already


def fake_stuck_worker(index: int, cfg: object, ctl_fd: int, out_fd: int,
                      parent: int, seed: object = None, before: object = None) -> NoReturn:
    """FAKE worker: takes a tick and never answers nor announces a call (what a real one
    reconnecting to a libvirtd that is away does between attempts)."""
    link = Link(ctl_fd, out_fd)
    link.hello(index, 1, "fake", ["state"], [])
    link.next_tick()
    time.sleep(120)
    os._exit(0)


@pytest.mark.slow  # 8-15 s: the full suite runs it, --fast does not
def test_an_old_worker_that_never_finishes_its_tick_is_killed_after_the_reload(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The new workers wait for the old ones' tick, but not for ever: past a tick's bound
    the old worker is killed and the new ones sample its domains."""
    uri = tagged_node(tmp_path / "node.xml", [None] * 5, "vm-")

    def stuck_then_real(index: int, cfg: Config, *args: Any) -> NoReturn:
        if cfg.instances == 1:
            fake_stuck_worker(index, cfg, *args)
        worker_main(index, cfg, *args)

    monkeypatch.setattr(supervisor, "worker_main", stuck_then_real)
    caplog.set_level(logging.INFO)
    first = build({"connect": uri, "instances": 1, "interval": 1.0, "format": "json"})
    with tempfile.TemporaryFile("w+") as out:
        with monkeypatch.context() as m:  # the stdout sink it makes writes to the file
            m.setattr(sys, "stdout", out)
            sup = Supervisor(first, reload=lambda: dataclasses.replace(first, instances=2))
        hup = threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGHUP))
        hup.start()
        try:
            run_for(14.0, sup=sup)
        finally:
            hup.cancel()
        out.seek(0)
        objects = [json.loads(line) for line in out]
    killed = [r.message for r in caplog.records if "did not finish its tick" in r.message]
    assert len(killed) == 1 and "virt-0" in killed[0]
    per_tick = Counter(o["timestamp"] for o in objects
                       if o["path"].endswith(".virt.memory-total"))
    ticks = sorted(per_tick)
    assert len(ticks) >= 4 and all(per_tick[ts] == 5 for ts in ticks), per_tick
    assert ticks[-1] - ticks[0] == len(ticks) - 1  # none missing once the new ones run
