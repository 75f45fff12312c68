"""Blocking libvirt calls under a deadline, and an exact count of those libvirtd still runs.

Killing a client never frees libvirtd's worker thread: a call stuck on a frozen
monitor or a wedged domain lock keeps its thread until libvirtd finishes it.
So a worker runs each call that may block on a helper thread and waits at most
its deadline. A call that overruns is *abandoned*, never retried or killed: it
stays in ``outstanding()`` (one libvirtd thread, the domains it involves) until
it returns, which is how the worker knows the thread is free again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Call(Generic[T]):
    """One libvirt call running on its own thread."""

    def __init__(self, what: str, uuids: Iterable[str], conn: object = None) -> None:
        self.what = what
        self.uuids = frozenset(uuids)
        self.conn = conn  # the connection it runs on (left alone while it is stuck)
        self.started = time.monotonic()
        self.done = threading.Event()
        self.finished = 0.0
        # What to do with the value if it comes back after the call was abandoned.
        self.late: Callable[[T], None] | None = None
        self._value: T | None = None
        self._error: BaseException | None = None

    def run(self, fn: Callable[[], T]) -> None:
        """Thread body: call ``fn``, keep its value or exception, mark done."""
        try:
            self._value = fn()
        except BaseException as exc:  # handed to the caller, re-raised there
            self._error = exc
        finally:
            self.finished = time.monotonic()
            self.done.set()

    @property
    def failed(self) -> bool:
        """Whether the finished call raised."""
        return self._error is not None

    def value(self) -> T:
        """The result of a finished call (its exception is raised here)."""
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


class Abandoned(Exception):
    """A call outlived its deadline; it is left running in libvirtd."""

    def __init__(self, call: Call[Any]) -> None:
        super().__init__(f"{call.what} of {len(call.uuids)} domain(s) outlived its deadline")
        self.call: Call[Any] = call


class Guard:
    """Runs calls with deadlines; remembers the abandoned ones until they return."""

    def __init__(self) -> None:
        self._abandoned: list[Call[object]] = []

    def run(self, what: str, uuids: Iterable[str], timeout: float, fn: Callable[[], T],
            conn: object = None) -> T:
        """``fn()``'s result, or Abandoned when it takes longer than ``timeout`` seconds.

        ``conn``: the connection ``fn`` uses, remembered with the call."""
        call: Call[T] = Call(what, uuids, conn)
        threading.Thread(target=call.run, args=(fn,), name=f"libvirt-{what}", daemon=True).start()
        if not call.done.wait(timeout):
            self._abandoned.append(call)  # type: ignore[arg-type]
            raise Abandoned(call)
        return call.value()

    def outstanding(self) -> list[Call[object]]:
        """Abandoned calls libvirtd is still running (each holds one of its threads)."""
        return [c for c in self._abandoned if not c.done.is_set()]

    def returned(self) -> list[tuple[Call[object], float]]:
        """Abandoned calls that have returned since the last look, with how long each took."""
        back = [c for c in self._abandoned if c.done.is_set()]
        self._abandoned = [c for c in self._abandoned if not c.done.is_set()]
        return [(c, c.finished - c.started) for c in back]

    def in_use(self, conn: object) -> bool:
        """Whether an abandoned call still runs on connection ``conn``."""
        return any(c.conn is conn for c in self.outstanding())

    def busy_with(self, what: str) -> bool:
        """Whether an abandoned call of kind ``what`` has not returned yet."""
        return any(c.what == what for c in self.outstanding())

    def involving(self, kinds: Iterable[str]) -> tuple[set[str], set[str]]:
        """(domains in any outstanding call of ``kinds``, domains that are alone in one)."""
        wanted = set(kinds)
        calls = [c for c in self.outstanding() if c.what in wanted]
        return ({u for c in calls for u in c.uuids},
                {next(iter(c.uuids)) for c in calls if len(c.uuids) == 1})
