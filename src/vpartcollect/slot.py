"""One instance's worker as the supervisor sees it: process, pipes, protocol state.

Plus the small process helpers the supervisor needs around a fork.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
from collections import deque
from dataclasses import dataclass, field

from vpartcollect import wire
from vpartcollect.partition import instance_name


@dataclass
class Slot:
    """Everything the supervisor knows about one instance and its current worker."""

    index: int
    pid: int = 0
    ctl: int = -1
    out: int = -1
    decoder: wire.FrameDecoder = field(default_factory=wire.FrameDecoder)
    ready: bool = False
    ncpus: int = 0
    busy: str | None = None
    busy_uuids: list[str] = field(default_factory=list)
    deadline: float | None = None
    current: wire.Tick | None = None
    delivered: set[str] = field(default_factory=set)
    unresponsive: int = 0
    pending: deque[wire.Tick] = field(default_factory=deque)
    respawn_now: bool = False  # killed for a hang: replaced at once, no backoff
    failures: int = 0
    spawn_at: float = 0.0
    spawned: int = 0
    kills: int = 0
    blocked: int = 0  # calls the worker abandoned that libvirtd still runs
    missed_ticks: int = 0
    missing: int = 0  # ticks skipped in the current episode (logged once)

    @property
    def name(self) -> str:
        return instance_name(self.index)


def keep_only_fds(keep: set[int]) -> None:
    """In a fresh child: close every inherited descriptor but stdio and ``keep``."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)
    # Workers never write metrics: stdout belongs to the parent.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)


def readable(fd: int) -> bool:
    """Whether ``fd`` has something to read right now."""
    sel = selectors.DefaultSelector()
    try:
        sel.register(fd, selectors.EVENT_READ)
        return bool(sel.select(0))
    finally:
        sel.close()


def describe_status(status: int) -> str:
    """A wait status in words: "killed by SIGKILL", "exit status 3"."""
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.WEXITSTATUS(status)}"
