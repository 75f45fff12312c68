"""Blocking libvirt calls under a deadline, and an exact count of those libvirtd still runs.

Killing a client never frees libvirtd's worker thread: a call stuck on a frozen
monitor or a wedged domain lock keeps its thread until libvirtd finishes it.
So a worker runs each call that may block on a helper thread and waits at most
its deadline. Helper threads are kept between calls (starting one per call was a
fair share of a worker's CPU per cycle); one whose call was abandoned serves
nobody else until that call returns. A call that overruns is *abandoned*, never
retried or killed: it stays in ``outstanding()`` (one libvirtd thread, the domains
it involves) until it returns, which is how the worker knows the thread is free
again. What an abandoned call returns is not used: its tick was decided when it
was abandoned.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Collection, Iterable
from typing import Any, Generic, TypeVar

from vpartcollect.calls import CallKind

T = TypeVar("T")


class Call(Generic[T]):
    """One libvirt call running on its own thread."""

    def __init__(self, kind: CallKind, uuids: Iterable[str], conn: object = None) -> None:
        self.kind = kind
        self.uuids = frozenset(uuids)
        self.conn = conn  # the connection it runs on (left alone while it is stuck)
        self.started = time.monotonic()
        self.done = threading.Event()
        self.finished = 0.0
        self._value: T | None = None
        self._error: BaseException | None = None

    def __repr__(self) -> str:
        state = (f"returned after {self.finished - self.started:.2f} s" if self.done.is_set()
                 else f"running for {time.monotonic() - self.started:.2f} s")
        return f"<Call {self.kind.value} of {len(self.uuids)} domain(s), {state}>"

    def run(self, fn: Callable[[], T], then: Callable[[], None] | None = None) -> None:
        """Thread body: call ``fn``, keep its value or exception, run ``then`` (the
        thread is free again), mark done."""
        try:
            self._value = fn()
        except BaseException as exc:  # handed to the caller, re-raised there
            self._error = exc
        finally:
            self.finished = time.monotonic()
            if then is not None:
                then()  # before done: the caller's next call may reuse this thread
            self.done.set()

    def value(self) -> T:
        """The result of a finished call (its exception is raised here)."""
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


class Abandoned(Exception):
    """A call outlived its deadline; it is left running in libvirtd."""

    def __init__(self, call: Call[Any]) -> None:
        super().__init__(f"{call.kind.value} of {len(call.uuids)} domain(s) outlived its "
                         "deadline")
        self.call: Call[Any] = call


_Job = tuple[Call[Any], Callable[[], Any]]


class _Runner:
    """A helper thread that runs one call at a time, handed to it by ``Guard.run``."""

    def __init__(self, idle: list[_Runner], lock: threading.Lock, keep: int) -> None:
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._idle, self._lock, self._keep = idle, lock, keep
        self._alive = True
        threading.Thread(target=self._serve, name="libvirt-call", daemon=True).start()

    def submit(self, call: Call[Any], fn: Callable[[], Any]) -> None:
        """Run ``fn`` for ``call`` on this thread."""
        self._jobs.put((call, fn))

    def _serve(self) -> None:
        while self._alive:
            call, fn = self._jobs.get()
            call.run(fn, self._free)

    def _free(self) -> None:
        with self._lock:
            if len(self._idle) < self._keep:
                self._idle.append(self)
            else:  # enough threads wait already (after a hang, several were started)
                self._alive = False


class Guard:
    """Runs calls with deadlines; remembers the abandoned ones until they return."""

    KEEP = 2  # idle helper threads kept: a cycle's calls run one after another

    def __init__(self) -> None:
        self._abandoned: list[Call[Any]] = []
        self._idle: list[_Runner] = []
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Guard {len(self.outstanding())} call(s) left in libvirtd>"

    def run(self, kind: CallKind, uuids: Iterable[str], timeout: float, fn: Callable[[], T],
            conn: object = None) -> T:
        """``fn()``'s result, or Abandoned when it takes longer than ``timeout`` seconds.

        ``conn``: the connection ``fn`` uses, remembered with the call."""
        call: Call[T] = Call(kind, uuids, conn)
        with self._lock:
            runner = self._idle.pop() if self._idle else None
        if runner is None:
            runner = _Runner(self._idle, self._lock, self.KEEP)
        runner.submit(call, fn)
        if not call.done.wait(timeout):
            self._abandoned.append(call)
            raise Abandoned(call)
        return call.value()

    def outstanding(self) -> list[Call[Any]]:
        """Abandoned calls libvirtd is still running (each holds one of its threads)."""
        return [c for c in self._abandoned if not c.done.is_set()]

    def returned(self) -> list[Call[Any]]:
        """Abandoned calls that have returned since the last look."""
        back = [c for c in self._abandoned if c.done.is_set()]
        self._abandoned = [c for c in self._abandoned if not c.done.is_set()]
        return back

    def in_use(self, conn: object) -> bool:
        """Whether an abandoned call still runs on connection ``conn``."""
        return any(c.conn is conn for c in self.outstanding())

    def busy_with(self, *kinds: CallKind) -> bool:
        """Whether an abandoned call of one of ``kinds`` has not returned yet."""
        return any(c.kind in kinds for c in self.outstanding())

    def caught_by(self, frozen: Collection[str]) -> int:
        """How many outstanding calls waited on a QEMU monitor of one of ``frozen``
        (lower-case uuids): calls a freeze caught, not calls blocked on libvirtd's own
        locks (a listing, a wedged domain whose QEMU runs)."""
        return sum(1 for c in self.outstanding()
                   if c.kind.needs_monitor and any(u.lower() in frozen for u in c.uuids))

    def involving(self) -> tuple[set[str], set[str]]:
        """(domains in any outstanding call that involves QEMU, domains alone in one)."""
        calls = [c for c in self.outstanding() if c.kind.involves_qemu]
        return ({u for c in calls for u in c.uuids},
                {next(iter(c.uuids)) for c in calls if len(c.uuids) == 1})
