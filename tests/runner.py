"""Running the real CLI from tests: one-shot, in the background, or while something happens
to it; reading what it wrote; finding what it left behind."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TypeVar

DEMO_NODE = Path(__file__).parent.parent / "src" / "vpartcollect" / "data" / "demo-node.xml"
DEMO_URI = f"test://{DEMO_NODE.resolve()}"
T = TypeVar("T")
# The collector under test: this checkout's, or the command VPC_COLLECTOR_CMD names (the
# installed package's /usr/bin/vpartcollect, to run the suite against what was shipped).
COLLECTOR = (shlex.split(os.environ.get("VPC_COLLECTOR_CMD", ""))
             or [sys.executable, "-m", "vpartcollect"])


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``vpartcollect ARGS`` to completion."""
    return subprocess.run([*COLLECTOR, *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


def cli_popen(*args: str, stdout: IO[str] | int = subprocess.PIPE,
              stderr: IO[str] | int = subprocess.PIPE,
              env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start ``vpartcollect ARGS`` in its own session (so leftovers can be found).

    A long run must get files for stdout/stderr: nobody reads a pipe until the end.
    """
    return subprocess.Popen([*COLLECTOR, *args], text=True,
                            stdout=stdout, stderr=stderr, start_new_session=True,
                            env={**os.environ, **(env or {})})


def run_during(args: Sequence[str], during: Callable[[subprocess.Popen[str]], T],
               ) -> tuple[list[tuple[str, float, float]], str, T]:
    """Run ``vpartcollect ARGS``; call ``during(proc)`` while it runs, then SIGTERM it.

    Returns its stdout as Graphite lines, its stderr (checked: no traceback, exit 0)
    and what ``during`` returned.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = cli_popen(*args, stdout=out, stderr=err)
        try:
            result = during(proc)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        out.seek(0)
        err.seek(0)
        lines, stderr = parse_lines(out.read()), err.read()
    no_traceback(stderr)
    assert proc.returncode == 0, stderr  # a stop is a clean exit
    return lines, stderr, result


def parse_lines(text: str) -> list[tuple[str, float, float]]:
    """Graphite plaintext lines -> (path, value, timestamp); asserts the format."""
    out = []
    for line in text.splitlines():
        path, value, ts = line.split(" ")
        out.append((path, float(value), float(ts)))
    return out


def no_traceback(stderr: str) -> None:
    """Fail if a Python traceback reached the operator."""
    assert "Traceback" not in stderr, stderr


def children(pid: int) -> list[int]:
    """The live children of ``pid`` (the supervisor's: its workers)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]
