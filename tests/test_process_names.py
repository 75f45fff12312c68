"""Each child process says what it is in ps, top and the journal (proctitle.py)."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

from harness import session_members
from runner import cli_popen

from vpartcollect.proctitle import comm_name, title


def names(pid: int) -> tuple[str, str]:
    """(comm, the command line as ps -o args shows it) of a live process."""
    comm = Path(f"/proc/{pid}/comm").read_text().rstrip("\n")
    args = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").replace(b"\0", b" ")
    return comm, args.decode()


def test_workers_and_the_spooler_are_named(demo_uri: str, tmp_path: Path) -> None:
    carbon = socket.create_server(("127.0.0.1", 0))  # takes the connection, reads nothing
    port = carbon.getsockname()[1]
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    proc = cli_popen("run", "--connect", demo_uri, "--instances", "4", "--interval", "1",
                     "--graphite", f"127.0.0.1:{port}", "--spool-dir", str(spool))
    try:
        expected = {("vpc virt-0", "vpartcollect: virt-0"), ("vpc virt-1", "vpartcollect: virt-1"),
                    ("vpc virt-2", "vpartcollect: virt-2"), ("vpc virt-3", "vpartcollect: virt-3"),
                    ("vpc spool", f"vpartcollect: spool 127.0.0.1:{port}")}
        seen: set[tuple[str, str]] = set()
        limit = time.monotonic() + 15
        while time.monotonic() < limit and not expected <= seen:
            time.sleep(0.2)
            for pid in session_members(proc.pid):
                try:
                    seen.add(names(pid))
                except OSError:
                    pass  # gone meanwhile (a short-lived child)
        assert expected <= seen, seen
        # The supervisor keeps the command that started it.
        comm, args = names(proc.pid)
        assert "vpartcollect run --connect" in args and not comm.startswith("vpc")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        carbon.close()


def test_names_fit_the_kernel_and_show_no_control_characters() -> None:
    assert comm_name("virt-2") == b"vpc virt-2"
    assert comm_name("spool") == b"vpc spool"
    assert len(comm_name("virt-123456789012")) == 15  # comm holds 15 bytes
    assert comm_name("virt-1234567é") == b"vpc virt-123456"  # never half a character
    assert title("lookup", "evil\nname\x1b:2003") == b"vpartcollect: lookup evil?name?:2003"
