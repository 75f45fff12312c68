"""Stdout that fails (a full disk) or that nobody reads: one line, Graphite unaffected.

Exit status (README): stdout failing with nothing else to write to is a run-time
failure, 1; with Graphite destinations the run goes on to them and a stop exits 0.
The Graphite side here is a plain TCP listener that reads and keeps every line (what
is checked is that lines keep arriving, not what carbon stores).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest
from listener import Listener
from runner import DEMO_URI, cli_popen, no_traceback


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "ERROR" in line or "WARNING" in line]


def test_once_to_a_full_disk_is_one_line_and_exit_1() -> None:
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "vpartcollect", "run", "--once",
                               "--connect", DEMO_URI, "--log-level", "warning"],
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=60,
                              check=False)
    no_traceback(proc.stderr)
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "stdout: No space left on device" in proc.stderr


def run_beside_graphite(stdout: int, seconds: float) -> tuple[Listener, str, int, float]:
    """Run at 0.5 s with stdout (JSON: big lines) and a Graphite destination."""
    listener = Listener()
    with tempfile.TemporaryFile("w+") as err:
        proc = cli_popen("run", "--connect", DEMO_URI, "--interval", "0.5", "--format",
                         "json", "--stdout", "--graphite", f"127.0.0.1:{listener.port}",
                         "--log-level", "warning", stdout=stdout, stderr=err)
        started = time.time()
        time.sleep(seconds)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        err.seek(0)
        return listener, err.read(), code, started


def every_tick_arrived(listener: Listener, started: float, seconds: float) -> None:
    # Ticks are 0.5 s apart, stamped to the second: each whole second gets two.
    whole = range(int(started) + 2, int(started + seconds) - 1)
    missing = [ts for ts in whole if listener.by_ts.get(ts, 0) == 0]
    assert len(whole) >= 6 and missing == [], (missing, listener.ticks())


@pytest.mark.slow  # 8-15 s: the full suite runs it, --fast does not
def test_a_full_disk_under_stdout_leaves_graphite_alone() -> None:
    with open("/dev/full", "w") as full:
        listener, stderr, code, started = run_beside_graphite(full.fileno(), 10)
    no_traceback(stderr)
    assert code == 0, stderr
    assert len(errors(stderr)) == 1 and "stdout: No space left on device; metrics go on " \
        "to the other outputs (graphite 127.0.0.1:" in stderr, stderr
    every_tick_arrived(listener, started, 10)


@pytest.mark.slow  # 8-15 s: the full suite runs it, --fast does not
def test_a_stdout_nobody_reads_leaves_graphite_alone() -> None:
    read_end, write_end = os.pipe()  # held open, never read: a reader that hangs
    try:
        listener, stderr, code, started = run_beside_graphite(write_end, 10)
    finally:
        os.close(read_end)
        os.close(write_end)
    no_traceback(stderr)
    assert code == 0, stderr
    # The stall, then at exit (after flush_timeout) what the reader never took.
    assert len(errors(stderr)) == 2 and "lines have waited 5 s for its reader" in stderr \
        and "not taken by its reader before exit" in stderr, stderr
    every_tick_arrived(listener, started, 10)
