"""Can this configuration work here? The one check ``run``, ``check-config`` and a reload share.

What a file cannot tell: whether libvirt opens the URI, and whether the spool
directory takes files. The URI is opened in a short-lived child, so the parent
never holds a libvirt connection; a reload asks it without waiting for it
(``LibvirtProbe``): the supervisor's loop goes on meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
from pathlib import Path
from typing import NoReturn

from vpartcollect import children
from vpartcollect.config import Config, ConfigError
from vpartcollect.daemon import fork_child
from vpartcollect.output.sinks import spool

PREFLIGHT_TIMEOUT = 30.0
_OK = b"ok"


class PreflightError(Exception):
    """libvirt cannot be used with this configuration (one line, for exit status 2)."""


class LibvirtProbe:
    """``uri`` being opened read-only in a forked child that reports on a pipe.

    The child gives up by itself after ``timeout`` (SIGALRM), so whoever waits for
    ``fd`` to become readable needs no timer of its own. Its exit status is not used:
    whoever reaps children may take it."""

    def __init__(self, uri: str, timeout: float = PREFLIGHT_TIMEOUT) -> None:
        self.uri, self.timeout = uri, timeout
        read_fd, write_fd = os.pipe()

        def child() -> NoReturn:  # connect, report, vanish
            try:
                signal.set_wakeup_fd(-1)
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD,
                            signal.SIGALRM):
                    signal.signal(sig, signal.SIG_DFL)
                signal.setitimer(signal.ITIMER_REAL, timeout)
                _report(uri, write_fd)
            finally:
                os._exit(0)

        # Only the pipe is inherited: a worker's control pipe held open here would keep
        # that worker from seeing it closed.
        try:
            pid = fork_child({write_fd}, child, "probe", "libvirt")
        except OSError:  # out of processes: the caller says so; no descriptor leaks
            os.close(read_fd)
            os.close(write_fd)
            raise
        children.register(pid, lambda status: None)  # the answer is on the pipe
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        self.pid, self.fd = pid, read_fd
        self._got = b""
        self._eof = False

    def _drain(self) -> None:
        while self.fd >= 0 and not self._eof:
            try:
                data = os.read(self.fd, 4096)
            except BlockingIOError:
                return
            self._got += data
            self._eof = not data

    def answer(self) -> str | None:
        """None while the child has not finished; then "" (the URI opened) or why not."""
        self._drain()
        if not self._eof:
            return None
        if self._got == _OK:
            return ""
        message = " ".join(self._got.decode(errors="replace").split())
        if not message:
            return f"libvirt at {self.uri} did not answer within {self.timeout:.0f} s"
        return f"cannot connect to libvirt at {self.uri}: {message}"

    def close(self) -> None:
        """Stop asking: the child is killed (if it still runs) and the pipe closed."""
        if self.fd >= 0:
            self._drain()
            if not self._eof and children.running(self.pid):  # its pid still its own
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
            os.close(self.fd)
            self.fd = -1


def _report(uri: str, fd: int) -> None:
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
        os.write(fd, (exc.get_error_message() or str(exc) or "failed").encode()[:2000])
        return
    os.write(fd, _OK)


def check_libvirt(uri: str, timeout: float = PREFLIGHT_TIMEOUT) -> None:
    """Open ``uri`` read-only in a forked child; raise PreflightError with libvirt's reason."""
    probe = LibvirtProbe(uri, timeout)
    try:
        while (why := probe.answer()) is None:
            select.select([probe.fd], [], [], timeout + 1)
    finally:
        probe.close()
        if children.running(probe.pid):
            with contextlib.suppress(ChildProcessError):
                children.exited(*os.waitpid(probe.pid, 0))
    if why:
        raise PreflightError(why)


def check_spool_dir(cfg: Config, create: bool) -> None:
    """The spool directory is made if missing and takes a file, as ``run`` needs;
    without ``create`` what was made for the check is removed again (``check-config``
    then agrees with ``run``: permissions alone do not tell, e.g. for root in /proc).
    ConfigError in one line if not."""
    if not (cfg.spool_dir and cfg.graphite):
        return
    where = Path(cfg.spool_dir)
    made: list[Path] = []
    try:
        for step in [*reversed(where.parents), where]:
            if step.is_dir():
                continue
            if step.exists() or step.is_symlink():
                raise ConfigError(f"spool_dir {where}: {step} is not a directory")
            os.mkdir(step, 0o700)
            made.append(step)
        spool.check_spool_dir(str(where))  # ours alone, and takes a file (no planted link)
    except OSError as exc:
        raise ConfigError(f"spool_dir {where}: {exc.strerror or exc}") from None
    finally:
        if not create:
            for step in reversed(made):
                with contextlib.suppress(OSError):
                    os.rmdir(step)


def spool_changed(old: Config, new: Config) -> bool:
    """Whether a reload asks for another spool (the running one is not looked at again:
    a full disk is something the spool copes with, not a bad configuration)."""
    return bool(new.spool_dir and new.graphite) and (
        (old.spool_dir, bool(old.graphite)) != (new.spool_dir, True))


def preflight(cfg: Config, create: bool = True) -> None:
    """Everything ``run`` checks before it starts; ``check-config`` checks the same
    without creating anything."""
    check_spool_dir(cfg, create)
    check_libvirt(cfg.connect)
