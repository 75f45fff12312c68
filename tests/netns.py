"""Real network devices for the kernel reader's tests: a network namespace with many tap
devices (as a hypervisor with dozens of VMs has) and a few veth pairs that carry known
traffic. The kernel lists them in /proc/net/dev, a seq_file served about a page a read."""

from __future__ import annotations

import ctypes
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

CLONE_NEWNET = 0x40000000


def _ip(*args: str, stdin: str | None = None) -> str:
    return subprocess.run(["ip", *args], input=stdin, capture_output=True, text=True,
                          check=True, timeout=60).stdout


def add_taps(names: list[str], netns: str | None = None) -> None:
    """Persistent tap devices (``ip tuntap``), in ``netns`` or this one, in one batch."""
    where = ["-n", netns] if netns else []
    _ip(*where, "-batch", "-", stdin="".join(f"tuntap add mode tap name {n}\n" for n in names))


def del_links(names: list[str]) -> None:
    """Remove these devices of this namespace (those still there)."""
    subprocess.run(["ip", "-force", "-batch", "-"], input="".join(
        f"link del {n}\n" for n in names), capture_output=True, text=True, check=False)


@contextmanager
def entered(netns: str) -> Iterator[None]:
    """This process (its main thread: /proc/net follows the thread group leader) inside
    ``netns`` for the block."""
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    there = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(there, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {netns}")
        try:
            yield
        finally:
            if libc.setns(home, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(home)
        os.close(there)


@contextmanager
def crowded_namespace(name: str, taps: int, pairs: int) -> Iterator[list[str]]:
    """A namespace with ``taps`` taps (``pad<n>``) and ``pairs`` veth pairs (``vv<n>`` with
    peer ``vp<n>``), all created in that order; ``vv<n>`` has sent n+1 raw frames of
    100·(n+1) bytes to ``vp<n>``. Yields the veth names, the last devices of the list."""
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    _ip("netns", "add", name)
    try:
        # No IPv6 autoconfiguration: links that come up stay silent but for our frames.
        subprocess.run(["ip", "netns", "exec", name, "sysctl", "-qw",
                        "net.ipv6.conf.all.disable_ipv6=1",
                        "net.ipv6.conf.default.disable_ipv6=1"], check=True, timeout=30)
        add_taps([f"pad{i}" for i in range(taps)], name)
        _ip("-n", name, "-batch", "-", stdin="".join(
            f"link add vv{i} type veth peer name vp{i}\nlink set vv{i} up\nlink set vp{i} up\n"
            for i in range(pairs)))
        # A veth sends nothing until both ends have carrier and its queue is attached
        # (operstate UP); "link set up" returns before that (seen on a loaded host: vv0's
        # frames dropped, its counters 0).
        limit = time.monotonic() + 10
        while time.monotonic() < limit and not all(
                " state UP " in line for line in
                _ip("-o", "-n", name, "link", "show", "type", "veth").splitlines()):
            time.sleep(0.05)
        with entered(name):
            for i in range(pairs):
                with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as raw:
                    raw.bind((f"vv{i}", 0))
                    frame = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x88\xb5"
                    for _ in range(i + 1):
                        raw.send(frame + bytes(100 * (i + 1) - len(frame)))
        yield [f"vv{i}" for i in range(pairs)] + [f"vp{i}" for i in range(pairs)]
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def kernel_counters(netns: str | None = None) -> dict[str, dict[str, int]]:
    """Each device's rx/tx bytes and packets as the kernel says over netlink (``ip -s``):
    the oracle, by another road than /proc/net/dev."""
    where = ["-n", netns] if netns else []
    out = {}
    for link in json.loads(_ip(*where, "-s", "-j", "link", "show")):
        s = link["stats64"]
        out[link["ifname"]] = {"rx.bytes": s["rx"]["bytes"], "rx.pkts": s["rx"]["packets"],
                               "tx.bytes": s["tx"]["bytes"], "tx.pkts": s["tx"]["packets"]}
    return out
