"""One reaper for every kind of child: each exit goes to the owner that registered it."""

from __future__ import annotations

import os
import signal
import time

from vpartcollect import children


def fork_sleeper() -> int:
    pid = os.fork()
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    return pid


def test_every_exit_goes_to_its_owner_once_and_a_reaped_pid_is_not_running() -> None:
    told: dict[str, list[int]] = {"worker": [], "spooler": []}
    worker, spooler = fork_sleeper(), fork_sleeper()
    children.register(worker, told["worker"].append)
    children.register(spooler, told["spooler"].append)
    assert children.running(worker) and children.running(spooler)
    os.kill(spooler, signal.SIGKILL)
    limit = time.monotonic() + 5
    while not told["spooler"] and time.monotonic() < limit:
        children.reap()
        time.sleep(0.01)
    assert len(told["spooler"]) == 1 and os.WTERMSIG(told["spooler"][0]) == signal.SIGKILL
    assert told["worker"] == [] and children.running(worker)
    assert not children.running(spooler)  # its owner must not signal that pid any more
    os.kill(worker, signal.SIGTERM)
    while not told["worker"] and time.monotonic() < limit:
        children.reap()
        time.sleep(0.01)
    assert len(told["worker"]) == 1 and len(told["spooler"]) == 1
