"""A worker that does not read its control pipe costs its own partition, never the others.

The supervisor sends a worker each tick over a pipe; a tick a new worker replays after a
reload carries a skip list (the domains already written for it): 2,000 domains of one
partition make a frame of ~76 KB, more than a pipe holds. Real processes: the CLI on the
libvirt test driver with 2 instances; the new ``virt-1`` worker is SIGSTOPped (a worker
blocked, stopped or stuck) after it connected and before the replay reaches it. virt-0
must go on getting every tick, and the stuck virt-1 is replaced by the watchdog.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

from harness import session_members
from nodes import tagged_node
from runner import cli_popen, no_traceback, parse_lines

from vpartcollect.watchdog import kill_deadline, unread_deadline

SMALL, BIG = 40, 2000  # virt-0's domains, virt-1's (its skip list: ~76 KB > 64 KB pipe)
INTERVAL, TIMEOUT, CHUNK = 1.0, 0.2, 100
# A reload waits this long for an old worker in a tick (handover.py): the new workers,
# which take 3-7 s to open a test driver of 2,040 domains on a busy host, are idle then.
RETIRE = kill_deadline(TIMEOUT, CHUNK)


def workers(sid: int, name: str) -> list[int]:
    """Pids of the session's processes called ``vpc <name>``."""
    out = []
    for pid in session_members(sid):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == f"vpc {name}":
                out.append(pid)
    return out


def waiting_for_a_tick(pid: int) -> bool:
    """Whether the worker sits in read() on its control pipe (it said hello, is idle)."""
    try:
        return Path(f"/proc/{pid}/wchan").read_text().endswith("pipe_read")
    except OSError:
        return False


def wait_for(what: str, check: object, limit: float) -> None:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if callable(check) and check():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {limit} s")


def conf_text(uri: str, include: str) -> str:
    return (f'connect = "{uri}"\ninterval = {INTERVAL}\ntimeout = {TIMEOUT}\ninstances = 2\n'
            f"chunk_size = {CHUNK}\ninclude = {include}\nkernel_reader = false\n")


def test_a_worker_not_reading_its_control_pipe_costs_no_other_partition(
        tmp_path: Path) -> None:
    tags: list[str | None] = [*(["virt-0"] * SMALL), *(["virt-1"] * BIG)]
    uri = tagged_node(tmp_path / "node.xml", tags, "vm-")
    small = {f"vm-{i:04d}" for i in range(SMALL)}
    conf = tmp_path / "c.toml"
    conf.write_text(conf_text(uri, "[]"))
    out, err = tmp_path / "out", tmp_path / "err"
    stopped: list[int] = []
    with out.open("w") as out_f, err.open("w") as err_f:
        proc = cli_popen("run", "-c", str(conf), stdout=out_f, stderr=err_f)
    try:
        wait_for("both workers", lambda: workers(proc.pid, "virt-0")
                 and workers(proc.pid, "virt-1"), 15)
        time.sleep(3 * INTERVAL)
        old0, old1 = workers(proc.pid, "virt-0")[0], workers(proc.pid, "virt-1")[0]
        # Old virt-0 stops: its ticks wait (owed at the reload, which waits RETIRE s for
        # it): the new workers connect meanwhile and are idle, with no tick yet.
        os.kill(old0, signal.SIGSTOP)
        stopped.append(old0)
        time.sleep(1.5 * INTERVAL)
        conf.write_text(conf_text(uri, '["."]'))  # a worker setting: new workers, same tags
        proc.send_signal(signal.SIGHUP)
        hup = time.time()
        wait_for("a new virt-1, idle", lambda: any(
            p != old1 and waiting_for_a_tick(p) for p in workers(proc.pid, "virt-1")),
                 RETIRE - 1)
        new1 = next(p for p in workers(proc.pid, "virt-1") if p != old1)
        os.kill(new1, signal.SIGSTOP)  # it said hello; the replay of the owed ticks is ~76 KB
        stopped.append(new1)
        assert time.time() - hup < RETIRE, "the handover may have happened already"
        # The handover at RETIRE, then the stuck worker's kill (unread_deadline later).
        time.sleep(hup + RETIRE + unread_deadline(TIMEOUT) + 1.5 - time.time())
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    lines, stderr = parse_lines(out.read_text()), err.read_text()
    no_traceback(stderr)
    samples = Counter((p.split(".")[0], ts) for p, _, ts in lines
                      if p.endswith(".virt.memory-total"))
    # Every tick from after the handover to the end: virt-0's domains each exactly once
    # (a supervisor blocked on virt-1's pipe writes nothing at all).
    first = ((hup + RETIRE) // INTERVAL + 2) * INTERVAL
    last = hup + RETIRE + unread_deadline(TIMEOUT)
    ticks = [first + k * INTERVAL for k in range(round((last - first) / INTERVAL))]
    missing = {ts: sum((d, ts) not in samples for d in small) for ts in ticks}
    twice = [k for k, n in samples.items() if n > 1]
    print(f"virt-0: {sum(missing.values())} samples missing over ticks {ticks}; "
          f"{len(twice)} written twice")
    assert ticks and not any(missing.values()), (missing, stderr[-3000:])
    assert not twice, twice[:5]
    # The stuck worker was killed (said once, with its pid) and a new one started.
    assert stderr.count(f"worker pid {new1} did not read its control pipe") == 1, \
        stderr[-3000:]
    assert stderr.count("virt-1: worker respawned") == 2, stderr[-3000:]
