"""What the publisher needs of a sink (stdout, a Graphite destination, ...), and defaults.

A sink takes finished metrics (``write``) and, if it wants them, each domain's
raw sample (``samples``), the end of an instance's tick and the start of a tick
with the collector's own values (``tick_done``, ``tick_started``), and the domains
forgotten (``forget``). The
supervisor's loop drives it without blocking: ``interest`` says what to wait
for, ``next_wakeup`` when to look at it anyway, ``poll`` runs before every wait,
``on_ready`` when what it waits for is ready. ``self_metrics`` are its share of
the collector's own metrics. A reload hands it the new configuration
(``reconfigure``: False when it must be replaced); at exit ``finish`` sends what
it holds until a deadline, then ``close``. ``SinkBase`` gives the defaults of a
sink that needs none of this.
"""

from __future__ import annotations

import selectors
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from vpartcollect.health import HealthValue
from vpartcollect.output.metrics import Metric
from vpartcollect.samples import DomainSample

if TYPE_CHECKING:
    from vpartcollect.config import Config

# What a sink waits for in the supervisor's selector: a socket or descriptor, and events.
Interest = tuple[socket.socket | int, int]


class SinkClosed(Exception):
    """A sink's reader went away (stdout's ``| head``): the run ends quietly."""


class SinkFailed(SinkClosed):
    """A sink cannot write any more (a full disk): one line in the log, and the run goes
    on with the other sinks, or ends with exit status 1 when none is left."""


class Sink(Protocol):
    """One output, as the publisher sees it (see the module's docstring)."""

    on_close: Callable[[], None]  # called before it closes what the selector watches
    writes: bool  # takes metrics (False: only reports, e.g. on a spool directory)

    @property
    def buffered(self) -> int:
        """Lines held for a destination the loop drives (what ``finish`` waits for)."""
        ...

    def write(self, metrics: Sequence[Metric]) -> None:
        """Take a batch of metrics (raise SinkClosed or SinkFailed when it cannot)."""

    def samples(self, instance: int, tick: float, samples: Sequence[DomainSample]) -> None:
        """The raw samples of one instance's domains for ``tick``, each domain once."""

    def tick_done(self, instance: int, tick: float, values: Mapping[str, float],
                  health: Sequence[HealthValue] = ()) -> None:
        """``instance`` finished ``tick``: every sample it had for it was handed over;
        ``values``: that instance's own metrics for it (once per tick); ``health``: what
        its worker saw of the host's health (health.py)."""

    def tick_started(self, tick: float, values: Mapping[str, float]) -> None:
        """``tick`` begins; ``values``: the collector-wide own metrics (all sinks')."""

    def forget(self, uuids: set[str]) -> None:
        """These domains were not sampled for long: drop what is kept of them."""

    def beside(self, others: int) -> None:
        """How many other sinks take metrics (after each build or reload)."""

    def interest(self) -> Interest | None:
        """What to wait for in the selector, or None."""

    def next_wakeup(self) -> float | None:
        """Monotonic time it next needs the loop (a reconnect, a time limit), or None."""

    def poll(self) -> None:
        """Before every wait: start what is due (a reconnect, a respawn)."""

    def on_ready(self, mask: int) -> None:
        """What it waits for is ready (``mask``: selector events)."""

    def self_metrics(self) -> Mapping[str, float]:
        """Its share of the collector's own metrics (combined over sinks: ``combine``)."""
        ...

    def stop_asked(self) -> None:
        """A stop was asked (from a signal handler): no write may hold it up for long."""

    def reconfigure(self, old: Config, new: Config) -> bool:
        """SIGHUP: apply ``new``; False when the sink must be replaced by a new one."""
        ...

    def finish(self, deadline: float) -> bool:
        """At exit: hand on what it holds until monotonic ``deadline``; True when done."""
        ...

    def close(self) -> None:
        """Let go of every socket, descriptor and process."""


class SinkBase:
    """Defaults of a sink: everything a sink may leave out does nothing."""

    writes = True

    def __init__(self) -> None:
        self.on_close: Callable[[], None] = lambda: None

    @property
    def buffered(self) -> int:
        """Nothing held (a sink that hands on every batch at once)."""
        return 0

    def write(self, metrics: Sequence[Metric]) -> None:
        """Takes nothing by default."""

    def samples(self, instance: int, tick: float, samples: Sequence[DomainSample]) -> None:
        """Raw samples are not wanted by default."""

    def tick_done(self, instance: int, tick: float, values: Mapping[str, float],
                  health: Sequence[HealthValue] = ()) -> None:
        """Nothing to do at the end of a tick by default."""

    def tick_started(self, tick: float, values: Mapping[str, float]) -> None:
        """Nothing to do at the start of a tick by default."""

    def forget(self, uuids: set[str]) -> None:
        """Keeps nothing per domain by default."""

    def beside(self, others: int) -> None:
        """Other sinks do not matter by default."""

    def interest(self) -> Interest | None:
        """Waits for nothing by default."""
        return None

    def next_wakeup(self) -> float | None:
        """Needs no wakeup by default."""
        return None

    def poll(self) -> None:
        """Nothing is ever due by default."""

    def on_ready(self, mask: int) -> None:
        """Never registered by default."""

    def self_metrics(self) -> Mapping[str, float]:
        """No metrics of its own by default."""
        return {}

    def stop_asked(self) -> None:
        """No write of its own holds a stop up by default."""

    def reconfigure(self, old: Config, new: Config) -> bool:
        """Kept as it is by default."""
        return True

    def finish(self, deadline: float) -> bool:
        """Holds nothing by default."""
        return True

    def close(self) -> None:
        """Holds nothing by default."""
        self.on_close()


# How the self-metrics of several sinks become one value: summed, unless named here.
COMBINE: dict[str, Callable[[Iterable[float]], float]] = {
    "spool_oldest_timestamp": min,
}


def combine(reports: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """One value per self-metric name over every sink's report (COMBINE, else the sum)."""
    merged: dict[str, list[float]] = {}
    for report in reports:
        for name, value in report.items():
            merged.setdefault(name, []).append(value)
    return {name: COMBINE.get(name, sum)(values) for name, values in merged.items()}


class Registrations:
    """What each of several owners waits for in one selector, registered, modified or
    unregistered only when that changes (before every wait, most owners want the same)."""

    def __init__(self) -> None:
        self._had: dict[int, Interest | None] = {}  # id(owner) -> what it waits for

    def update(self, selector: selectors.BaseSelector, owner: object,
               want: Interest | None, data: Any) -> None:
        """``owner`` now waits for ``want`` (None: nothing); ``data`` goes with the key."""
        had = self._had.get(id(owner))
        if had is not None and (want is None or had[0] != want[0]):
            selector.unregister(had[0])
            had = None
        if want is not None:
            if had is None:
                selector.register(want[0], want[1], data)
            elif had[1] != want[1]:
                selector.modify(want[0], want[1], data)
        self._had[id(owner)] = want

    def drop(self, selector: selectors.BaseSelector, owner: object) -> None:
        """``owner`` waits for nothing any more (it is about to close what it had)."""
        had = self._had.pop(id(owner), None)
        if had is not None:
            selector.unregister(had[0])
