"""One instance's worker as the supervisor sees it: process, pipes, protocol state.

Plus the small process helpers the supervisor needs around a fork.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from vpartcollect import children, wire
from vpartcollect.calls import CallKind
from vpartcollect.daemon import fork_child
from vpartcollect.outbox import Outbox
from vpartcollect.partition import instance_name
from vpartcollect.ticks import queue_tick
from vpartcollect.watchdog import RESPAWN_MIN, respawn_delay
from vpartcollect.worker.qemu_proc import thread_state

log = logging.getLogger(__name__)


@dataclass
class Slot:
    """Everything the supervisor knows about one instance and its current worker."""

    index: int
    pid: int = 0
    ctl: Outbox | None = None  # the control pipe (ticks to the worker)
    out: int = -1
    decoder: wire.FrameDecoder = field(default_factory=wire.FrameDecoder)
    ready: bool = False
    ncpus: int = 0
    hello: wire.Hello | None = None  # the last worker's: where a respawned one starts from
    busy: CallKind | None = None
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
        """``virt-N``."""
        return instance_name(self.index)

    def counters(self, done: wire.Done) -> dict[str, float]:
        """The instance's own metrics for a finished tick."""
        return {"cycle_seconds": round(done.seconds, 6), "domains": done.domains,
                "watchdog_kills": self.kills, "respawns": max(0, self.spawned - 1),
                "unresponsive_domains": self.unresponsive, "missed_ticks": self.missed_ticks,
                "blocked_calls": self.blocked}

    def queue(self, tick: wire.Tick, backlog: int) -> None:
        """A tick falls due: it waits for the worker; beyond ``backlog`` the oldest go
        (counted in missed_ticks, logged once per episode)."""
        dropped = queue_tick(self.pending, tick, backlog)
        if dropped and not self.missing:
            log.warning("%s: worker %s; skipping ticks until it catches up", self.name,
                        "not ready" if not self.ready else "behind")
        self.missed_ticks += dropped
        self.missing += dropped

    # -- the process --------------------------------------------------------
    def start(self, child: Callable[[int, int], NoReturn],
              selector: selectors.BaseSelector) -> None:
        """Fork a worker with a control pipe (to it) and a result pipe (from it); the
        child runs ``child(ctl_r, out_w)``."""
        fds: list[int] = []
        try:
            ctl_r, ctl_w = os.pipe()
            fds += (ctl_r, ctl_w)
            out_r, out_w = os.pipe()
            fds += (out_r, out_w)
            pid = fork_child({ctl_r, out_w}, lambda: child(ctl_r, out_w), self.name)
        except OSError as exc:  # out of processes or descriptors: the supervisor goes on
            for fd in fds:
                os.close(fd)
            self.failures += 1
            delay = max(RESPAWN_MIN, respawn_delay(self.failures))  # never a busy loop
            self.spawn_at = time.monotonic() + delay
            log.warning("%s: cannot start a worker (%s); trying again in %.1f s", self.name,
                        exc.strerror or exc, delay)
            return
        os.close(ctl_r)
        os.close(out_w)
        os.set_blocking(out_r, False)
        self.pid, self.ctl, self.out = pid, Outbox(ctl_w), out_r
        self.decoder = wire.FrameDecoder()
        self.ready, self.respawn_now, self.busy, self.deadline = False, False, None, None
        if self.spawned:
            log.info("%s: worker respawned as pid %d", self.name, pid)
        self.spawned += 1
        selector.register(out_r, selectors.EVENT_READ, ("worker", self))

    def read(self, selector: selectors.BaseSelector) -> list[wire.Message]:
        """The messages in what the worker wrote; on bytes that are not frames, the
        worker is killed (with backoff: it misbehaves, it did not hang)."""
        if self.out < 0:  # a stale event: the pipe was closed earlier in the same select()
            return []
        try:
            data = os.read(self.out, 1 << 20)
        except BlockingIOError:
            return []
        except OSError:
            data = b""
        if not data:
            self.close_out(selector)  # it exited; reaping does the rest
            return []
        try:
            return self.decoder.feed(data)
        except wire.WireError as exc:
            log.error("%s: worker pid %d sent a bad frame (%s); killing it", self.name,
                      self.pid, exc)
            self.kill(hung=False)
            return []

    def kill(self, hung: bool) -> None:
        """SIGKILL the worker; only a hang earns an immediate respawn."""
        self.respawn_now, self.deadline = hung, None
        if self.pid and children.running(self.pid):  # once reaped, the pid is not ours
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def send(self, tick: wire.Tick, now: float) -> None:
        """Hand ``tick`` to the worker (never blocking: see outbox.py)."""
        if self.ctl is not None:
            self.ctl.send(wire.encode(tick), now)

    def unread(self, now: float, limit: float) -> bool:
        """Whether the worker left part of its tick unread for over ``limit`` s."""
        since = self.ctl.unread_since() if self.ctl is not None else None
        return bool(self.pid) and since is not None and now - since > limit

    def kill_if_unread(self, now: float, limit: float) -> None:
        """The watchdog's kill of a worker that did not read its tick in ``limit`` s
        (stopped, stuck before reading): replaced at once, its successor gets the tick.
        The pipe is closed with it: killed once, counted once, not waited on again."""
        if self.ctl is not None and self.unread(now, limit):
            log.warning("%s: worker pid %d did not read its control pipe for %.0f s (%d bytes "
                        "of its tick unread: stopped or stuck); killing it", self.name,
                        self.pid, limit, self.ctl.waiting + self.ctl.in_pipe())
            self.kills += 1
            self.kill(hung=True)
            self.close_ctl()

    def close_ctl(self) -> None:
        """Close the control pipe: the worker reads EOF once done with what it has."""
        if self.ctl is not None:
            self.ctl.close()
            self.ctl = None

    def close_out(self, selector: selectors.BaseSelector) -> None:
        """Close the pipe the worker writes its results to."""
        if self.out >= 0:
            selector.unregister(self.out)
            os.close(self.out)
            self.out = -1

    def exited(self, status: int, stopping: bool, now: float) -> None:
        """The worker is gone: requeue what it did not deliver, schedule its successor."""
        self.close_ctl()
        self.pid, self.ready, self.deadline = 0, False, None
        if self.current is not None:
            # Sample what it did not deliver; NOWAIT makes the hung domain answer at once.
            self.pending.appendleft(wire.Tick(self.current.ts, sorted(self.delivered)))
            self.current = None
        if stopping:
            return
        if self.respawn_now:
            self.spawn_at = 0.0
            return
        self.failures += 1
        delay = respawn_delay(self.failures)
        self.spawn_at = now + delay
        if self.failures == 1 or delay != respawn_delay(self.failures - 1):
            log.warning("%s: worker exited (%s); restarting in %.1f s", self.name,
                        describe_status(status), delay)

    def overdue(self, now: float) -> bool:
        """Whether the worker is in a call past its deadline."""
        return bool(self.pid) and self.deadline is not None and now > self.deadline


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


def stuck_why(threads: Sequence[tuple[str, str]]) -> str:
    """Why a process killed with SIGKILL is still there, from its threads' (state letter,
    wchan) in /proc: one in uninterruptible sleep (D) cannot die until the kernel call it
    is in returns, e.g. a stat() on a hung NFS or FUSE mount."""
    stuck = [wchan for state, wchan in threads if state == "D"]
    if stuck:
        where = f" in {stuck[0]}" if stuck[0] not in ("", "0") else ""
        return f"a thread in uninterruptible sleep (D){where}, e.g. on a filesystem " \
               "that stopped answering"
    alive = sorted({state for state, _ in threads if state not in ("Z", "X")})
    return f"threads in state {','.join(alive)}" if alive else "exiting"


def describe_stuck(pid: int, proc: str = "/proc") -> str:
    """``stuck_why`` of the process ``pid`` as /proc shows it now."""
    threads = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"{proc}/{pid}/task"):
            try:
                state = thread_state(Path(f"{proc}/{pid}/task/{tid}/stat").read_text())
                wchan = Path(f"{proc}/{pid}/task/{tid}/wchan").read_text().strip()
            except (OSError, IndexError):
                continue
            threads.append((state, wchan))
    return stuck_why(threads)
