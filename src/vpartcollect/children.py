"""Who owns each forked child of this process, and the one reaper that tells them.

A process that forks more than one kind of child (the supervisor: workers,
spoolers, name lookups; a spooler: name lookups) reaps them all in one place
with ``waitpid(-1)``. An owner registers each child it forks with a callback,
never waits for it itself, and signals it only while it is ``running``: once
reaped, its pid may belong to someone else. Modelled on gunicorn's arbiter.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

log = logging.getLogger(__name__)

_owners: dict[int, Callable[[int], None]] = {}  # pid -> told the wait status once reaped


def register(pid: int, on_exit: Callable[[int], None]) -> None:
    """``pid`` was forked by this process; ``on_exit(status)`` runs once it is reaped."""
    _owners[pid] = on_exit


def running(pid: int) -> bool:
    """Whether ``pid`` is our child not reaped yet (so signalling it reaches it)."""
    return pid in _owners


def exited(pid: int, status: int) -> bool:
    """Hand a reaped child's status to its owner; False when nobody registered it."""
    owner = _owners.pop(pid, None)
    if owner is None:
        return False
    owner(status)
    return True


def reap() -> None:
    """Collect every child that exited and hand each to its owner."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if not exited(pid, status):
            log.debug("reaped pid %d, which nobody owned", pid)


def forget_all() -> None:
    """In a freshly forked child: the parent's children are not ours."""
    _owners.clear()
