"""Is the libvirt URI usable? Asked in a short-lived child, so the parent never connects."""

from __future__ import annotations

import os
import select
import signal

PREFLIGHT_TIMEOUT = 30.0


class PreflightError(Exception):
    """libvirt cannot be used with this configuration (one line, for exit status 2)."""


def check_libvirt(uri: str, timeout: float = PREFLIGHT_TIMEOUT) -> None:
    """Open ``uri`` read-only in a forked child; raise PreflightError with libvirt's reason."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: connect, report, vanish
        code = 0
        try:
            os.close(read_fd)
            # libxml2 inside libvirt prints its own warnings to fd 2; the reason comes back
            # through the pipe instead, as one line.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            import libvirt

            from vpartcollect.libvirt_conn import quiet_libvirt

            quiet_libvirt()
            try:
                libvirt.openReadOnly(uri).close()
            except libvirt.libvirtError as exc:
                os.write(write_fd, (exc.get_error_message() or str(exc)).encode()[:2000])
                code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    try:
        ready, _, _ = select.select([read_fd], [], [], timeout)
        message = os.read(read_fd, 4096).decode(errors="replace").strip() if ready else None
    finally:
        os.close(read_fd)
    if message is None:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    if message is None:
        raise PreflightError(f"libvirt at {uri} did not answer within {timeout:.0f} s")
    if message or status != 0:
        detail = " ".join(message.split()) if message else "connection failed"
        raise PreflightError(f"cannot connect to libvirt at {uri}: {detail}")
