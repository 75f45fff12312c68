"""A stop while a worker is stuck in the kernel: the collector still exits, in bounded time.

A worker stats each datastore's images on a probe thread (worker/datastores.py). On a
FUSE datastore that stopped answering (tests/stallfs.py: a real filesystem, like a
hard NFS mount whose server died) that thread waits on a request the filesystem has
taken; killed, it stays in uninterruptible sleep (D) until the filesystem answers,
and the worker cannot be reaped until then. SIGTERM to the collector must not wait
for it: the collector writes what it holds, says which worker it left behind, exits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import StallStore, session_members
from nodes import domain_xml, write_node
from runner import children, cli_popen, no_traceback, parse_lines

from vpartcollect.slot import describe_stuck, stuck_why

STOP_BOUND = 8.0  # seconds from SIGTERM to exit: STOP_GRACE, one more for SIGKILL, margin


@pytest.mark.parametrize(("threads", "why"), [
    ([("Z", ""), ("D", "request_wait_answer")],
     "a thread in uninterruptible sleep (D) in request_wait_answer, e.g. on a filesystem "
     "that stopped answering"),
    ([("D", "0")], "a thread in uninterruptible sleep (D), e.g. on a filesystem that "
                   "stopped answering"),
    ([("Z", ""), ("T", "do_signal_stop"), ("S", "futex_wait")], "threads in state S,T"),
    ([("Z", "")], "exiting"),
    ([], "exiting"),
])
def test_why_a_killed_process_is_still_there(threads: list[tuple[str, str]], why: str) -> None:
    assert stuck_why(threads) == why


def test_a_stopped_child_is_described_from_proc() -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        child.send_signal(signal.SIGSTOP)
        _until("stopped", lambda: "T" in {s for s, _ in _threads(child.pid).values()}, 5)
        assert describe_stuck(child.pid) == "threads in state T"
    finally:
        child.kill()
        child.wait()
    assert describe_stuck(child.pid) == "exiting"  # no such process any more


def _threads(pid: int) -> dict[int, tuple[str, str]]:
    """{tid: (state letter, wchan)} of a process's threads; {} once it is gone."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return {}
    for tid in tids:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            wchan = Path(f"/proc/{pid}/task/{tid}/wchan").read_text()
        except OSError:
            continue
        out[int(tid)] = (stat.rsplit(")", 1)[1].split()[0], wchan)
    return out


def _waiting_on_fuse(pid: int) -> bool:
    return any("fuse" in wchan or "request_wait_answer" in wchan
               for _, wchan in _threads(pid).values())


def _until(what: str, check: Callable[[], bool], seconds: float) -> None:
    limit = time.monotonic() + seconds
    while time.monotonic() < limit:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {seconds} s: {what}")


def test_sigterm_exits_while_a_worker_is_in_d_state(tmp_path: Path) -> None:
    if not (os.path.exists("/dev/fuse") and os.path.exists("/usr/lib/python3/dist-packages/"
                                                          "fusepy.py")):
        pytest.skip("needs /dev/fuse and Debian's python3-fusepy")
    store = StallStore(tmp_path / "store").start()
    image = store.back / "a.img"
    image.write_bytes(b"\0" * 4096)
    a = domain_xml("domain-A", 0).replace("/img/0.qcow2", str(store.mount / "a.img"))
    uri = write_node(tmp_path / "node.xml", [a, domain_xml("domain-B", 1)])
    proc: subprocess.Popen[str] | None = None
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        try:
            proc = cli_popen("run", "--connect", uri, "--interval", "1", stdout=out, stderr=err)
            _until("a first tick on stdout", lambda: os.fstat(out.fileno()).st_size > 0, 15)
            (worker,) = children(proc.pid)
            store.stall()
            _until("the worker's probe waiting on the stalled store",
                   lambda: _waiting_on_fuse(worker), 10)
            time.sleep(1.2)  # one more tick, sampled while the store is dead
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_BOUND)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"still running {STOP_BOUND} s after SIGTERM with a "
                                     "worker in D state") from None
            # The worker really is stuck in the kernel: killed, one thread still in D.
            states = _threads(worker)
            assert any(s == "D" for s, _ in states.values()), states
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
            store.stop()  # answers again: the killed worker finishes dying
        _until("the worker gone once the store answers",
               lambda: session_members(proc.pid) == [], 10)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    no_traceback(stderr)
    assert proc.returncode == 0, stderr
    left = [line for line in stderr.splitlines() if "left behind" in line]
    assert len(left) == 1, stderr
    assert f"pid {worker}" in left[0] and "virt-0" in left[0], left
    assert "uninterruptible" in left[0], left
    # Written and flushed: every tick up to the stop, with the ones sampled while the
    # store was dead (domain-A's cpu goes on without its disk), to the last line.
    lines = parse_lines(stdout)
    stamps = sorted({ts for _, _, ts in lines})
    dead = [t for p, v, t in lines if "datastore_answering-" in p and p.endswith(
        "_store_mnt") and v == 0]
    assert dead, stdout
    for ts in stamps[1:]:  # the first tick has no rate yet
        if ts <= max(dead):
            hosts = {p.split(".")[0] for p, _, t in lines
                     if t == ts and p.endswith(".virt.virt_cpu_total")}
            assert hosts == {"domain-A", "domain-B"}, (ts, hosts)
