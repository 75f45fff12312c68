"""Name lookups for Graphite destinations, off the supervisor's loop.

``getaddrinfo`` blocks for as long as the resolver takes (a DNS server that does
not answer costs its full timeout, per attempt). The supervisor's loop must never
wait on it, and the parent must not start threads (it forks workers), so a lookup
runs in a short-lived child that writes the addresses to a pipe the loop selects
on. A numeric address needs no lookup and is answered at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgpack

from vpartcollect import children
from vpartcollect.daemon import die_with_parent
from vpartcollect.proctitle import set_process_name

LOOKUP_SECONDS = 30.0  # a lookup still unanswered after this has failed
_MAX_REPLY = 1 << 16

Address = tuple[int, tuple[Any, ...]]  # (family, sockaddr) ready for socket.connect


def order_addresses(infos: Sequence[tuple[int, tuple[Any, ...]]]) -> list[Address]:
    """Addresses to try in turn: duplicates removed, families alternated (RFC 8305).

    The resolver's first choice stays first; alternating means that a family that
    does not work (carbon listening on IPv4 only behind a name that also has ::1)
    costs one failed attempt, not all of that family's addresses.
    """
    seen: set[tuple[int, tuple[Any, ...]]] = set()
    unique = []
    for family, addr in infos:
        key = (family, tuple(addr[:2]))
        if key not in seen:
            seen.add(key)
            unique.append((family, tuple(addr)))
    if not unique:
        return []
    first = unique[0][0]
    same = [a for a in unique if a[0] == first]
    other = [a for a in unique if a[0] != first]
    out: list[Address] = []
    while same or other:
        if same:
            out.append(same.pop(0))
        if other:
            out.append(other.pop(0))
    return out


def encode_reply(infos: Sequence[tuple[int, tuple[Any, ...]]] | None, error: str = "") -> bytes:
    """What the lookup child writes: the addresses, or an error text."""
    addrs = [[family, list(addr)] for family, addr in infos or []]
    return bytes(msgpack.packb({"addresses": addrs, "error": error}))


def decode_reply(data: bytes) -> tuple[list[Address], str]:
    """The child's reply as (ordered addresses, error); a malformed reply is an error."""
    try:
        reply = msgpack.unpackb(data, raw=False)
        addrs = [(int(family), tuple(addr)) for family, addr in reply["addresses"]]
        error = str(reply["error"])
        for family, addr in addrs:
            if family not in (socket.AF_INET, socket.AF_INET6) or not addr:
                raise ValueError("not an IP address")
            str(addr[0])
            int(addr[1])
    except (ValueError, TypeError, KeyError, msgpack.UnpackException):
        return [], "name lookup gave a malformed answer"
    if not addrs and not error:
        error = "name lookup found no address"
    return order_addresses(addrs), error


def numeric(host: str, port: int) -> list[Address] | None:
    """The addresses of a numeric host (no lookup needed), or None for a name."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_NUMERICHOST)
    except (OSError, UnicodeError):
        return None
    return order_addresses([(info[0], info[4]) for info in infos])


class Lookup:
    """One name lookup running in a child process; poll ``fd``, then call ``read``."""

    def __init__(self, host: str, port: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.deadline = clock() + LOOKUP_SECONDS
        self._buf = b""
        r, w = os.pipe()
        try:
            pid = os.fork()
        except OSError:  # the caller counts a failed attempt; no descriptor may leak
            os.close(r)
            os.close(w)
            raise
        if pid == 0:  # child: look up, write, leave without running any parent code
            os.close(r)
            _lookup_child(host, port, w)
        os.close(w)
        os.set_blocking(r, False)
        self.pid, self.fd = pid, r
        children.register(pid, self._reaped)

    def _reaped(self, _status: int) -> None:
        self.pid = 0  # gone: its pid may be someone else's from now on

    def read(self) -> tuple[list[Address], str] | None:
        """Read what the child wrote: the outcome once it is complete, else None."""
        try:
            while chunk := os.read(self.fd, _MAX_REPLY):
                self._buf += chunk
                if len(self._buf) > _MAX_REPLY:
                    self.close()
                    return [], "name lookup gave a malformed answer"
        except BlockingIOError:
            return None
        self.close(finished=True)
        if not self._buf:  # killed (or died) before it answered
            return [], "name lookup ended without an answer"
        return decode_reply(self._buf)

    def expired(self) -> bool:
        """Whether the lookup has run past LOOKUP_SECONDS."""
        return self.clock() >= self.deadline

    def close(self, finished: bool = False) -> None:
        """Release the pipe; stop the child unless it ``finished`` (wrote its answer).
        The process's reaper (children.reap) collects it."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.pid and not finished and children.running(self.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        self.pid = 0


def _lookup_child(host: str, port: int, out: int) -> None:
    code = 0
    try:
        signal.set_wakeup_fd(-1)  # the parent's wakeup pipe is not ours to write
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        die_with_parent()
        set_process_name("lookup", f"{host}:{port}")
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            reply = encode_reply([(info[0], info[4]) for info in infos
                                  if info[0] in (socket.AF_INET, socket.AF_INET6)])
        except (OSError, UnicodeError) as exc:
            reply = encode_reply(None, f"cannot resolve {host}: "
                                       f"{getattr(exc, 'strerror', None) or exc}")
        view = memoryview(reply)
        while view:
            view = view[os.write(out, view):]
    except BaseException:  # nothing may escape into the parent's code
        code = 1
    finally:
        os._exit(code)
