"""Daemon manners: systemd notifications, SIGHUP reload, folded repeated log lines."""

from __future__ import annotations

import logging
import signal
import socket
import tempfile
import time
from pathlib import Path

from harness import session_members
from runner import DEMO_URI, cli_popen, no_traceback, parse_lines

from vpartcollect.daemon import RepeatFilter


def test_repeated_warnings_are_folded_not_hidden() -> None:
    filt = RepeatFilter(window=0.3)

    def record(msg: str, level: int = logging.WARNING) -> logging.LogRecord:
        return logging.LogRecord("x", level, __file__, 1, msg, None, None)

    assert filt.filter(record("libvirtd down"))
    assert not any(filt.filter(record("libvirtd down")) for _ in range(4))
    assert filt.filter(record("another problem"))
    assert filt.filter(record("debug noise", logging.DEBUG))
    assert filt.filter(record("debug noise", logging.DEBUG))
    time.sleep(0.35)
    again = record("libvirtd down")
    assert filt.filter(again)
    assert again.getMessage() == "libvirtd down (and 4 more like it in the last 0 s)"


def read_notes(sock: socket.socket, until: str, timeout: float = 15) -> list[str]:
    notes: list[str] = []
    limit = time.monotonic() + timeout
    while time.monotonic() < limit and not any(until in n for n in notes):
        sock.settimeout(max(0.01, limit - time.monotonic()))
        try:
            notes.append(sock.recv(4096).decode())
        except TimeoutError:
            break
    return notes


def test_sighup_reload_and_systemd_notifications(tmp_path: Path) -> None:
    conf = tmp_path / "vpartcollect.toml"
    conf.write_text(f'connect = "{DEMO_URI}"\ninstances = 2\ninterval = 1\n')
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = cli_popen("run", "-c", str(conf), stdout=out, stderr=err,
                         env={"NOTIFY_SOCKET": str(tmp_path / "notify")})
        try:
            assert any(n.startswith("READY=1") for n in read_notes(notify, "READY=1"))
            assert len(session_members(proc.pid)) == 3
            conf.write_text(f'connect = "{DEMO_URI}"\ninstances = 3\ninterval = 1\n')
            reloaded_at = time.time()
            proc.send_signal(signal.SIGHUP)
            notes = read_notes(notify, "READY=1")
            assert notes[0].startswith("RELOADING=1\nMONOTONIC_USEC=") and "READY=1" in notes
            time.sleep(3)
            assert len(session_members(proc.pid)) == 4
            # Bad reloads are logged and the running configuration kept: never a crash.
            for bad in (f'connect = "{DEMO_URI}"\ninstances = 0\n'.encode(),
                        'hostname = "h\xf4te"\n'.encode("latin-1"),
                        b"interval = 1e9\n", b"flush_timeout = 1e300\n"):
                conf.write_bytes(bad)
                proc.send_signal(signal.SIGHUP)
                time.sleep(1.0)
                assert proc.poll() is None and len(session_members(proc.pid)) == 4
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)
        assert any("STOPPING=1" in n for n in read_notes(notify, "STOPPING=1", 2))
        out.seek(0)
        err.seek(0)
        lines, stderr = parse_lines(out.read()), err.read()
    notify.close()
    assert proc.returncode == 0, stderr
    no_traceback(stderr)
    assert "SIGHUP: instances: must be greater than 0, got 0; keeping the running" \
        in stderr
    assert "not UTF-8 text (byte 13); keeping the running" in stderr
    assert "SIGHUP: interval: at most 86400" in stderr
    assert "SIGHUP: flush_timeout: at most 3600" in stderr
    virt2 = [ts for p, _, ts in lines if p.endswith(".vpartcollect-virt-2.domains")]
    assert virt2 and min(virt2) >= int(reloaded_at)
    # domain-C (tag virt-2) moved from virt-0 to the new virt-2 without missing a cycle.
    stamps = sorted({int(ts) for p, _, ts in lines if p == "domain-C.virt.memory-total"})
    assert stamps == list(range(stamps[0], stamps[-1] + 1))
