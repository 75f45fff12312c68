"""The data path: what workers sampled in, metrics (names, rates) out to every sink.

The supervisor (the control plane) hands over samples, a finished tick's
counters and the start of each tick; the publisher owns the Ledger (one sample
per domain and tick, whatever path made it) and the MetricBuilder, whose rate
state outlives any worker, the sinks (made by sinks/factory.py; it names none)
and their selector registrations. It never forks and never waits on a sink
that the loop drives; a sink may block only when it is the only output (stdout).
"""

from __future__ import annotations

import functools
import logging
import selectors
import time
from collections.abc import Callable, Hashable, Sequence

from vpartcollect import wire
from vpartcollect.config import Config
from vpartcollect.health import HealthValue
from vpartcollect.output.ledger import Ledger
from vpartcollect.output.metrics import Metric, MetricBuilder
from vpartcollect.output.sinks.base import Registrations, Sink, SinkClosed, SinkFailed, combine
from vpartcollect.output.sinks.factory import wanted
from vpartcollect.samples import DomainSample

__all__ = ["BadSample", "OutputClosed", "OutputFailed", "Publisher"]

OutputClosed = SinkClosed  # an output's reader went away: the run ends quietly
OutputFailed = SinkFailed  # the last output failed: the run ends with exit status 1

log = logging.getLogger(__name__)


class BadSample(ValueError):
    """A sample the supervisor cannot turn into metrics (the worker that sent it pays)."""


def rate_gap(interval: float) -> float:
    """Reads closer than this give no rate of their own (see rates.py): half a second,
    or half the interval when it is shorter."""
    return min(0.5, interval / 2)


class Publisher:
    """Builds metrics from samples and writes them to every sink."""

    def __init__(self, cfg: Config, keep_ticks: int = 16) -> None:
        self.builder = MetricBuilder(cfg.naming(), cfg.store_rates, rate_gap(cfg.interval),
                                     cfg.selection())
        self.ledger = Ledger(keep_ticks)
        self.duplicates: dict[int, int] = {}  # instance -> samples dropped as second ones
        # Which ticks each instance's own metrics went out for: once per tick, as domains.
        self.counted = Ledger(keep_ticks)
        self.flush_timeout = cfg.flush_timeout
        self.sinks: list[Sink] = []
        self._keys: dict[int, Hashable] = {}
        # Outputs that failed (stdout on a full disk, its descriptor now /dev/null): a
        # reload does not make them again to write into nothing.
        self._failed: dict[Hashable, str] = {}
        self._registered = Registrations()
        self._selector: selectors.BaseSelector | None = None
        self._build(None, cfg)

    # -- samples in -------------------------------------------------------
    def samples(self, instance: int, msg: wire.Results, ncpus: int,
                silent: bool = False) -> None:
        """Metrics of one Results frame; ``silent`` only primes the rates (--once).
        A domain already sampled for this tick is dropped and counted. A sample that
        cannot be made into metrics is left out, the others written, then BadSample."""
        out: list[Metric] = []
        good: list[DomainSample] = []
        bad = ""
        for d in msg.domains:
            if not self.ledger.admit(d.uuid, msg.tick):
                self.duplicates[instance] = self.duplicates.get(instance, 0) + 1
                log.debug("virt-%d: a second sample of %s for %s dropped", instance, d.name,
                          msg.tick)
                continue
            try:
                out += self.builder.domain_metrics(instance, msg.tick, d, ncpus)
                good.append(d)
            except (ArithmeticError, ValueError, TypeError, KeyError, IndexError) as exc:
                # What a worker sends comes from outside: whatever it holds, the supervisor
                # goes on (the worker is replaced); never a traceback out of the loop.
                bad = f"{d.name[:60]!r}: {type(exc).__name__}: {str(exc)[:200]}"
        if not silent:
            self.emit(out)
            if good:
                for sink in list(self.sinks):
                    self._guard(sink, functools.partial(sink.samples, instance, msg.tick,
                                                        good))
        if bad:
            raise BadSample(bad)

    def instance_done(self, instance: int, tick: float, values: dict[str, float],
                      health: Sequence[HealthValue] = ()) -> None:
        """The collector's own metrics of one instance for a finished tick (once per tick:
        after a reload, the new worker's replay of a tick the old one finished is not),
        with what its worker saw of the host's health (health.py)."""
        if not self.counted.admit(str(instance), tick):
            return
        values = {**values, "duplicate_samples": self.duplicates.get(instance, 0)}
        self.emit([self.builder.self_metric(instance, k, v, tick) for k, v in values.items()]
                  + [self.builder.self_metric(instance, typ, v, tick, inst)
                     for typ, inst, v in health])
        for sink in list(self.sinks):
            self._guard(sink, functools.partial(sink.tick_done, instance, tick, values,
                                                health))

    def new_tick(self, ts: float, tracked: int) -> None:
        """A tick begins: the collector-wide metrics (``tracked`` per-domain entries, and
        what each sink reports of itself)."""
        values: dict[str, float] = {"tracked_domains": tracked}
        values.update(combine(sink.self_metrics() for sink in self.sinks))
        self.emit([self.builder.self_metric(None, k, v, ts) for k, v in values.items()])
        for sink in list(self.sinks):
            self._guard(sink, functools.partial(sink.tick_started, ts, values))

    def clock_stepped(self) -> None:
        """The wall clock stepped: ticks of the new clock may be older than those seen."""
        self.ledger.new_era()
        self.counted.new_era()  # a step back: the new, smaller ticks are counted too

    def forget_older_than(self, ts: float) -> set[str]:
        """Drop the state of domains not sampled since monotonic ``ts``; return their uuids."""
        gone = self.builder.forget_older_than(ts)
        self.ledger.forget(gone)
        if gone:
            for sink in self.sinks:
                sink.forget(gone)
        return gone

    def tracked(self) -> int:
        """Domains held in the largest of the publisher's per-domain tables."""
        return max(self.builder.tracked(), self.ledger.tracked())

    def emit(self, metrics: Sequence[Metric]) -> None:
        """Hand a batch to every sink that takes metrics (see ``_guard`` for one that
        cannot)."""
        if not metrics:
            return
        for sink in self._writers:
            self._guard(sink, functools.partial(sink.write, metrics))

    def _guard(self, sink: Sink, action: Callable[[], None]) -> None:
        """Run ``action`` of ``sink``. A sink whose reader went away (SinkClosed) is
        dropped and the run ends (OutputClosed); one that fails (SinkFailed: a full disk)
        is one line in the log and dropped, and the run goes on while other sinks take
        metrics, else it ends too."""
        try:
            action()
        except SinkClosed as exc:
            if isinstance(exc, SinkFailed):
                self._failed[self._keys.get(id(sink))] = str(sink)
            self._drop(sink)
            if not isinstance(exc, SinkFailed):
                raise
            if not self._writers:
                log.error("%s; nothing more can be written", exc)
                raise
            log.error("%s; metrics go on to the other outputs (%s)", exc,
                      ", ".join(str(s) for s in self._writers))

    def _drop(self, sink: Sink) -> None:
        if sink in self.sinks:
            self.sinks = [s for s in self.sinks if s is not sink]
            self._writers = [s for s in self.sinks if s.writes]
            if self._selector is not None:
                self.unregister(self._selector, sink)

    # -- the supervisor's loop --------------------------------------------
    def next_wakeup(self) -> float | None:
        """Monotonic time the sinks next need the loop (a reconnect, a time limit)."""
        return min((w for s in self.sinks if (w := s.next_wakeup()) is not None),
                   default=None)

    def register(self, selector: selectors.BaseSelector) -> None:
        """Before every wait: let each sink start what is due (a reconnect), and register
        what each wants to wait for (a socket, a name lookup) with ``selector``."""
        self._selector = selector
        for sink in list(self.sinks):
            self._guard(sink, sink.poll)
            if sink not in self.sinks:
                continue
            self._registered.update(selector, sink, sink.interest(), ("sink", sink))

    @staticmethod
    def on_ready(sink: Sink, mask: int) -> None:
        """What a sink waits for (its socket, its lookup) is ready."""
        sink.on_ready(mask)

    def unregister(self, selector: selectors.BaseSelector, sink: Sink) -> None:
        """Take one sink out of ``selector``."""
        self._registered.drop(selector, sink)

    def _release(self, sink: Sink) -> None:
        """A sink is about to close what the selector watches: the selector lets go first
        (a descriptor closed while registered, then reused, would be refused there)."""
        if self._selector is not None:
            self.unregister(self._selector, sink)

    def _build(self, old: Config | None, new: Config) -> None:
        """The sinks ``new`` asks for: each kept when it takes the new configuration
        (a reload), the others closed first, then the missing ones made."""
        have = {self._keys[id(sink)]: sink for sink in self.sinks}
        keep: dict[Hashable, Sink] = {}
        for key, _make in wanted(new):
            sink = have.get(key)
            if sink is not None and old is not None and sink.reconfigure(old, new):
                keep[key] = have.pop(key)
        for key, _make in wanted(new):
            if key in self._failed:
                log.warning("SIGHUP: %s stays off: it failed earlier in this run",
                            self._failed[key])
        for sink in have.values():
            if sink.buffered:
                log.warning("SIGHUP: %s removed with %d lines not sent", sink, sink.buffered)
            self._release(sink)
            sink.close()
        self.sinks, self._keys = [], {}
        for key, make in wanted(new):
            if key in self._failed:
                continue
            sink = keep[key] if key in keep else make()
            sink.on_close = functools.partial(self._release, sink)
            self.sinks.append(sink)
            self._keys[id(sink)] = key  # which configured output it is (the factory's key)
        self._writers = [s for s in self.sinks if s.writes]
        for sink in self.sinks:
            sink.beside(len(self._writers) - sink.writes)

    # -- reload and exit ----------------------------------------------------
    def reconfigure(self, old: Config, new: Config, selector: selectors.BaseSelector) -> None:
        """SIGHUP: naming and rates settings; sinks reconfigured, made or closed as the
        new configuration asks (an unchanged Graphite destination keeps its connection
        and what it has queued)."""
        self.builder.naming, self.builder.store_rates = new.naming(), new.store_rates
        self.builder.selection = new.selection()
        self.builder.rates.min_gap = rate_gap(new.interval)
        self.flush_timeout = new.flush_timeout
        self._selector = selector
        self._build(old, new)

    def stop_writes(self) -> None:
        """A stop was asked (from a signal handler): no sink holds it up for long."""
        for sink in self.sinks:
            sink.stop_asked()

    def finish(self, selector: selectors.BaseSelector) -> None:
        """At exit: send what the sinks hold, for ``flush_timeout`` at most, and let each
        finish in turn (Graphite's confirm, stdout's reader gets what time is left);
        then close them."""
        limit = time.monotonic() + self.flush_timeout
        while any(s.buffered for s in self.sinks) and time.monotonic() < limit:
            try:
                self.register(selector)  # and what a slow stdout reader takes meanwhile
            except SinkClosed:
                continue
            for key, mask in selector.select(min(0.1, max(0.0, limit - time.monotonic()))):
                kind, obj = key.data
                if kind == "sink":
                    obj.on_ready(mask)
        for sink in self.sinks:
            if sink.buffered:
                log.warning("%s: %d lines not sent before exit", sink, sink.buffered)
            elif not sink.finish(limit):
                log.warning("%s: did not confirm the last lines before exit", sink)
            self.unregister(selector, sink)
            sink.close()
