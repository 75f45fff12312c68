"""A spooled destination's child process and files: a spooler's death costs what it held,
never the supervisor; segments never follow planted links nor keep a closed descriptor;
what does not fit in memory goes to the spool; backlogs left behind are counted.

Real spooler processes (forked as the supervisor forks them) on real sockets; the
"slow carbon" is a real TCP listener that takes connections and reads only when the
test says so (its kernel queue is what a carbon that does not keep up leaves).
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest
from carbon import free_port
from runner import cli, cli_popen, no_traceback, parse_lines

from vpartcollect.config import ConfigError, Endpoint, build
from vpartcollect.output.metrics import Metric
from vpartcollect.output.sinks import segments
from vpartcollect.output.sinks.factory import spool_settings
from vpartcollect.output.sinks.spool import Spool
from vpartcollect.output.sinks.spool_channel import SpoolChannel
from vpartcollect.output.sinks.spooler import Spooler, SpoolSettings


def metrics(first: int, count: int, ts: int = 1_700_000_000) -> list[Metric]:
    return [Metric(f"t.m{i}", float(i), float(ts)) for i in range(first, first + count)]


def spooled_lines(directory: Path) -> set[bytes]:
    spool = Spool(directory, 1 << 30)
    out: set[bytes] = set()
    while (rec := spool.next_batch()) is not None:
        out.update(rec.payload.splitlines())
        spool.handed(rec)
    spool.close()
    return out


def wait_until(what: Callable[[], bool], seconds: float = 10.0) -> bool:
    limit = time.monotonic() + seconds
    while time.monotonic() < limit:
        if what():
            return True
        time.sleep(0.02)
    return False


def pump(channel: SpoolChannel, seconds: float) -> bool:
    """The supervisor's loop for one channel, for ``seconds`` (True, to chain a check)."""
    sel = selectors.DefaultSelector()
    limit = time.monotonic() + seconds
    while time.monotonic() < limit:
        channel.poll()
        want = channel.interest()
        if want is None:
            time.sleep(0.02)
            continue
        sel.register(*want)
        for _key, mask in sel.select(0.05):
            channel.on_ready(mask)
        sel.unregister(want[0])
    sel.close()
    return True


def settings(directory: Path, max_lines: int = 100_000) -> SpoolSettings:
    return SpoolSettings(directory, 1 << 30, 1_000_000.0, max_lines, 30.0, 2.0)


# -- item 3: a spooler SIGKILLed while carbon is down ---------------------------------
def test_a_spooler_killed_costs_what_it_held_never_the_supervisor(tmp_path: Path) -> None:
    """Carbon down (nobody on the port); the spooler is SIGKILLed after it put batch A on
    disk; batch B is written while it waits for its restart backoff. Today's main raised
    AssertionError in write() here (which, in the collector, ends the supervisor). Now
    B waits in the outbox and reaches the next spooler: A and B are both in the spool."""
    where = tmp_path / "spool" / "dest"
    channel = SpoolChannel(Endpoint("127.0.0.1", free_port()), settings(where))
    try:
        pump(channel, 0.1)
        assert channel.pid
        channel.write(metrics(0, 100))
        assert wait_until(lambda: pump(channel, 0.1) and channel.report.get("spooled") == 100
                          and not channel.report.get("buffered"))
        os.kill(channel.pid, signal.SIGKILL)
        assert wait_until(lambda: pump(channel, 0.05) and channel.sock is None)
        channel.write(metrics(100, 50))  # the spooler waits for its backoff
        assert channel.buffered == 50
        assert wait_until(lambda: pump(channel, 0.1) and channel.buffered == 0)
        assert channel.finish(time.monotonic() + 5)
    finally:
        channel.close()
    got = spooled_lines(where)
    want = {f"t.m{i} {i} 1700000000".encode() for i in range(150)}
    assert got == want, (len(got), sorted(want - got)[:3])


def test_the_outbox_is_bounded_while_the_spooler_is_down(tmp_path: Path) -> None:
    channel = SpoolChannel(Endpoint("127.0.0.1", free_port()), settings(tmp_path / "d", 300))
    channel.start_at = time.monotonic() + 3600  # down for now
    for k in range(5):
        channel.write(metrics(k * 100, 100))
    assert channel.buffered == 300 and channel.dropped == 200
    channel.close()


# -- item 11: a failed segment open --------------------------------------------------
def test_a_failed_segment_open_keeps_no_closed_descriptor(tmp_path: Path) -> None:
    """The spool directory replaced by a file: the next segment cannot be opened. Today's
    main kept the closed writer's number and, at the next try, closed whatever reused it
    (here a pipe, in the collector the carbon socket). Now that pipe survives, and once
    the directory can be made again the spool writes on."""
    where = tmp_path / "s"
    spool = Spool(where, 1 << 30, segment_bytes=64)
    spool.append(b"a 1 1\n" * 20, 20, 1.0)  # past segment_bytes: the next append rotates
    for seg in segments.segments(where):
        seg.unlink()
    where.rmdir()
    where.write_text("in the way")
    with pytest.raises(OSError):
        spool.append(b"b 2 2\n", 1, 2.0)
    r, w = os.pipe()  # takes the lowest free descriptor: the writer's old number
    try:
        where.unlink()
        spool.append(b"c 3 3\n", 1, 3.0)  # the directory is made again
        os.fstat(r)  # still ours
        assert os.write(w, b"x") == 1 and os.read(r, 1) == b"x"
        assert spool.next_batch() is not None
        assert stat.S_IMODE(where.stat().st_mode) == 0o700
        assert spool.stats().dropped == 20  # the lines in the removed directory: counted
    finally:
        spool.close()
        os.close(r)
        os.close(w)


# -- item 12: links, modes ------------------------------------------------------------------
def test_segments_never_follow_a_planted_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    where = tmp_path / "s"
    spool = Spool(where, 1 << 30, segment_bytes=1)  # a new segment for every batch
    spool.append(b"a 1 1\n", 1, 1.0)
    os.symlink(victim, where / segments.segment_name(2))
    spool.append(b"b 2 2\n", 1, 2.0)
    spool.close()
    assert victim.read_bytes() == b"precious"
    assert stat.S_IMODE(where.stat().st_mode) == 0o700
    again = Spool(where, 1 << 30)  # a later run does not take the link for a segment
    assert again.stats().lines == 2 and again.stats().corrupt_bytes == 0
    again.close()
    assert victim.read_bytes() == b"precious"


def test_the_start_probe_never_follows_a_planted_link(tmp_path: Path, demo_uri: str) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    os.symlink(victim, spool / ".vpartcollect-write-test")
    res = cli("run", "--connect", demo_uri, "--graphite", f"127.0.0.1:{free_port()}",
              "--spool-dir", str(spool), "--once")
    assert victim.read_text() == "precious", res.stderr


def test_a_spool_dir_others_may_write_in_is_refused_in_one_line(tmp_path: Path,
                                                                demo_uri: str) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    spool.chmod(0o777)
    res = cli("run", "--connect", demo_uri, "--graphite", "127.0.0.1:9", "--spool-dir",
              str(spool), "--once")
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0, res.stderr
    assert "spool_dir" in res.stderr and "other users may write" in res.stderr, res.stderr


# -- item 13: a small graphite_buffer and a slow carbon ------------------------------------
@pytest.mark.parametrize("reloaded", [False, True])
def test_what_does_not_fit_in_memory_goes_to_the_spool(tmp_path: Path, reloaded: bool) -> None:
    """graphite_buffer 1,000, carbon up but not reading yet, one 5,000-line frame: today's
    main dropped 4,000 at once (0 spooled). Now every line reaches carbon, the rest
    through the spool once carbon reads. ``reloaded``: the spooler started with 100,000
    and a reload set 1,000 (its watermark used to stay at the start's)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    channel = SpoolChannel(Endpoint("127.0.0.1", port),
                           settings(tmp_path / "d", 100_000 if reloaded else 1000))
    got: list[bytes] = []
    conns: list[socket.socket] = []
    try:
        pump(channel, 0.1)
        if reloaded:
            channel.set_bounds(1000, 30.0)
            pump(channel, 0.1)
        listener.settimeout(5)
        conns.append(listener.accept()[0])  # the live connection is up
        channel.write(metrics(0, 5000))
        pump(channel, 1.0)  # carbon reads nothing yet
        listener.settimeout(0.05)
        limit = time.monotonic() + 10
        buf = b""
        while len(set(got)) < 5000 and time.monotonic() < limit:
            pump(channel, 0.05)
            try:
                conns.append(listener.accept()[0])  # the drain's connection
            except TimeoutError:
                pass
            for conn in conns:
                conn.setblocking(False)
                try:
                    while data := conn.recv(1 << 20):
                        buf += data
                except BlockingIOError:
                    pass
            *whole, buf = buf.split(b"\n")
            got += whole
        dropped = channel.dropped
    finally:
        channel.close()
        for conn in conns:
            conn.close()
        listener.close()
    assert dropped == 0
    assert set(got) == {f"t.m{i} {i} 1700000000".encode() for i in range(5000)}


# -- item 14 and 16: configuration ---------------------------------------------------
@pytest.mark.parametrize("listed", [["a:2003", "a:2003"], ["carbon:2003", "CARBON:2003"]])
def test_a_destination_listed_twice_is_one_line(listed: list[str]) -> None:
    with pytest.raises(ConfigError, match=r"^graphite: .* is listed twice$"):
        build({"graphite": listed})


def test_a_resend_window_of_zero_is_accepted_and_means_none(tmp_path: Path) -> None:
    """0 (README: before a carbon-aggregator, which would sum a repeat): nothing is sent
    twice, neither the live lines after a reconnect nor a spooled batch already handed."""
    cfg = build({"graphite_resend_seconds": 0, "graphite": ["a:2003"],
                 "spool_dir": str(tmp_path)})
    assert cfg.graphite_resend_seconds == 0
    with pytest.raises(ConfigError, match="graphite_resend_seconds: must be at least 0"):
        build({"graphite_resend_seconds": -1})
    where = spool_settings(cfg, cfg.graphite[0])
    assert where is not None and where.resend_seconds == 0
    spool = Spool(where.directory, 1 << 30, where.resend_seconds, segment_bytes=1)
    spool.append(b"a 1 1\n", 1, 1.0)
    spool.append(b"b 2 2\n", 1, 2.0)
    first = spool.next_batch()
    assert first is not None
    spool.handed(first)
    spool.rewind(time.monotonic())  # the drain connection died right after
    again = spool.next_batch()
    assert again is not None and again.payload == b"b 2 2\n"
    spool.close()


# -- item 15: a renamed destination's backlog -------------------------------------------
def test_a_renamed_destinations_backlog_is_warned_about_and_counted(tmp_path: Path,
                                                                    demo_uri: str) -> None:
    spool_dir = tmp_path / "spool"
    old = Spool(spool_dir / "old-carbon_2003", 1 << 30)
    for k in range(3):
        old.append(b"".join(b"left.m%d %d 1700000000\n" % (i, k) for i in range(40)), 40,
                   1_700_000_000.0)
    old.close()
    spool_dir.chmod(0o700)
    err_path = tmp_path / "err"
    with open(tmp_path / "out", "w") as out, open(err_path, "w") as err:
        proc = cli_popen("run", "--connect", demo_uri, "--interval", "0.5", "--hostname", "hv",
                         "--graphite", f"127.0.0.1:{free_port()}", "--stdout",
                         "--spool-dir", str(spool_dir), stdout=out, stderr=err)
        time.sleep(3)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    stderr = err_path.read_text()
    no_traceback(stderr)
    lines = parse_lines((tmp_path / "out").read_text())
    counted = [v for p, v, _ in lines if p == "hv.vpartcollect.spool_stranded_lines"]
    assert counted and set(counted) == {120.0}, counted
    assert stderr.count("old-carbon_2003: 120 line(s) left for a destination no longer "
                        "configured") == 1, stderr


# -- audit: a child that cannot be forked --------------------------------------------------
PIDS_CGROUP = Path("/sys/fs/cgroup/pids")


@pytest.mark.skipif(os.geteuid() != 0 or not (PIDS_CGROUP / "cgroup.procs").exists(),
                    reason="needs root and the cgroup v1 pids controller")
@pytest.mark.slow  # 8-15 s: the full suite runs it, --fast does not
def test_a_worker_that_cannot_be_forked_costs_the_supervisor_nothing(tmp_path: Path,
                                                                    demo_uri: str) -> None:
    """The kernel refuses fork (a pids cgroup at its limit, as on a host out of pids):
    today's main died of the OSError. Now the supervisor logs one line, tries again with
    backoff, and the worker is back once forks work again."""
    group = PIDS_CGROUP / f"vpc-test-{os.getpid()}"
    group.mkdir()
    err_path = tmp_path / "err"
    try:
        with open(tmp_path / "out", "w") as out, open(err_path, "w") as err:
            proc = cli_popen("run", "--connect", demo_uri, "--instances", "2", "--interval",
                             "0.5", "--hostname", "hv", stdout=out, stderr=err)
            time.sleep(2)
            (group / "pids.max").write_text("1")  # the supervisor alone
            (group / "cgroup.procs").write_text(str(proc.pid))
            workers = [int(c) for c in Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
                       .read_text().split()]
            os.kill(workers[0], signal.SIGKILL)
            time.sleep(3)
            alive = proc.poll() is None
            (group / "pids.max").write_text("max")
            restored = time.time()
            time.sleep(3)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    finally:
        group.rmdir()
    stderr = err_path.read_text()
    no_traceback(stderr)
    assert alive and proc.returncode == 0, stderr
    assert "cannot start a worker" in stderr, stderr
    lines = parse_lines((tmp_path / "out").read_text())
    late = {p.split(".")[0] for p, _v, ts in lines if ts > restored + 1.5}
    early = {p.split(".")[0] for p, _v, ts in lines if ts < restored - 3}
    assert late == early, (early, late)  # every domain of both instances is back


def test_a_resend_window_set_to_zero_by_a_reload_sends_nothing_twice(tmp_path: Path) -> None:
    """graphite_resend_seconds 0 by a reload (the spooler started with 30): the spool's
    window used to stay 30 s, and a dead drain connection handed a batch on again."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    spooler = Spooler(Endpoint("127.0.0.1", 9), settings(tmp_path / "d"), theirs)
    try:
        mine.sendall(msgpack.packb(["settings", 1000, 0], use_bin_type=True))
        assert spooler._read_channel()
        assert spooler.watermark == 1000
        spool = spooler.spool
        spool.append(b"a 1 1\n", 1, 1.0)
        first = spool.next_batch()
        assert first is not None
        spool.handed(first)
        time.sleep(0.01)
        spool.rewind(time.monotonic())  # the drain connection died right after
        again = spool.next_batch()
        assert again is None or b"a 1 1" not in again.payload
    finally:
        spooler.spool.close()
        mine.close()
        theirs.close()


def test_a_new_connection_on_the_fd_of_one_that_died_is_watched(tmp_path: Path) -> None:
    """The drain connection dies (its socket closed, its fd number free) and the live one
    reconnects before the loop looks again: the new socket gets the same fd number. Seen
    under load in test_spool_carbon: the selector still held the dead socket under that
    number, register() raised KeyError and the spooler crashed (restarted, a traceback)."""
    listener = socket.create_server(("127.0.0.1", 0))
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    spooler = Spooler(Endpoint("127.0.0.1", listener.getsockname()[1]),
                      settings(tmp_path / "d"), theirs)
    try:
        spooler.drain.poll()  # the drain connects, and the loop watches it
        want = spooler.drain.interest()
        assert want is not None and isinstance(want[0], socket.socket)
        spooler._registered.update(spooler.selector, spooler.drain, want, spooler.drain)
        number = want[0].fileno()
        spooler.drain.close()  # it dies; the live one connects in the loop's next look
        spooler._register()
        conn = spooler.live.conn.sock
        assert conn is not None and conn.fileno() == number  # the case, not another
        assert spooler.selector.get_key(conn).data is spooler.live
    finally:
        spooler.spool.close()
        for s in (mine, theirs, listener):
            s.close()
