"""The data path: what workers sampled in, metrics (names, rates) out to stdout and Graphite.

The supervisor (the control plane) hands over samples, a finished tick's
counters and the start of each tick; the publisher owns the Ledger (one sample
per domain and tick, whatever path made it) and the MetricBuilder, whose rate
state outlives any worker, the sinks and their selector registrations. It
never forks and never waits on Graphite; only stdout is written blocking.
"""

from __future__ import annotations

import logging
import selectors
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from vpartcollect import wire
from vpartcollect.config import Config, ConfigError, Endpoint
from vpartcollect.ledger import Ledger
from vpartcollect.metrics import Metric, MetricBuilder
from vpartcollect.prometheus.channel import PrometheusChannel
from vpartcollect.prometheus.server import ExporterSettings
from vpartcollect.prometheus.webconfig import WebConfigError
from vpartcollect.prometheus.webconfig import load as load_web_config
from vpartcollect.sinks import Destination
from vpartcollect.sinks.graphite import GraphiteSink
from vpartcollect.sinks.spool import Stranded
from vpartcollect.sinks.spool_channel import SpoolChannel
from vpartcollect.sinks.spooler import SpoolSettings
from vpartcollect.sinks.stdout import StdoutClosed, StdoutFailed, StdoutSink

__all__ = ["BadSample", "OutputClosed", "Publisher"]

OutputClosed = StdoutClosed  # stdout's reader went away: the run ends quietly

log = logging.getLogger(__name__)


class BadSample(ValueError):
    """A sample the supervisor cannot turn into metrics (the worker that sent it pays)."""


def spool_settings(cfg: Config, endpoint: Endpoint | None = None) -> SpoolSettings | None:
    """How a destination's lines are spooled (None: not at all); one directory each."""
    if not cfg.spool_dir:
        return None
    where = Path(cfg.spool_dir)
    if endpoint is not None:
        where = where / f"{endpoint.host}_{endpoint.port}".replace("/", "_").lstrip(".")
    return SpoolSettings(where, cfg.spool_max_bytes, cfg.spool_drain_rate,
                         cfg.graphite_buffer, cfg.graphite_resend_seconds, cfg.flush_timeout)


def stranded_spools(cfg: Config, warned: set[str] | None = None) -> Stranded:
    """What the spool directory holds for destinations ``cfg`` does not list."""
    in_use = {s.directory.name for ep in cfg.graphite
              if (s := spool_settings(cfg, ep)) is not None}
    return Stranded(Path(cfg.spool_dir) if cfg.spool_dir else None, in_use, warned)


def same_spool(old: Config, new: Config) -> bool:
    """Whether a reload keeps the spool as it is: only the memory bound, the resend
    window (applied to the running spoolers) or the flush timeout differ, or nothing.
    A running spooler keeps the flush timeout it started with: at exit the supervisor
    waits for it the new one at most, and what it has not sent by then stays on disk."""
    before, after = spool_settings(old), spool_settings(new)
    if before is None or after is None:
        return before is after
    return (replace(before, max_lines=0, resend_seconds=0, flush_timeout=0)
            == replace(after, max_lines=0, resend_seconds=0, flush_timeout=0))


def exporter_settings(cfg: Config) -> ExporterSettings:
    """What the Prometheus exporter process is started with (the web configuration as
    read now: a bad one is a ConfigError, exit 2 at start, the running one kept on
    SIGHUP)."""
    try:
        first = load_web_config(cfg.web_config) if cfg.web_config else None
    except WebConfigError as exc:
        raise ConfigError(str(exc)) from None
    return ExporterSettings(cfg.interval, cfg.prometheus_timestamps, cfg.instances,
                            2 * cfg.interval + cfg.call_timeout + 5, cfg.web_config, first)


def rate_gap(interval: float) -> float:
    """Reads closer than this give no rate of their own (see rates.py): half a second,
    or half the interval when it is shorter."""
    return min(0.5, interval / 2)


class Publisher:
    """Builds metrics from samples and writes them to every output."""

    def __init__(self, cfg: Config, keep_ticks: int = 16) -> None:
        self.builder = MetricBuilder(cfg.naming(), cfg.store_rates, rate_gap(cfg.interval),
                                     cfg.selection())
        self.ledger = Ledger(keep_ticks)
        self.duplicates: dict[int, int] = {}  # instance -> samples dropped as second ones
        # Which ticks each instance's own metrics went out for: once per tick, as domains.
        self.counted = Ledger(keep_ticks)
        self.stdout = StdoutSink(cfg.format, spare=bool(cfg.graphite)) if cfg.use_stdout \
            else None
        self.graphite = [self._destination(ep, cfg) for ep in cfg.graphite]
        self.flush_timeout = cfg.flush_timeout
        self._registered: dict[int, tuple[Any, int] | None] = {}
        self._selector: selectors.BaseSelector | None = None
        self.stranded = stranded_spools(cfg)
        self.prometheus = self._prometheus(cfg, None)

    # -- samples in -------------------------------------------------------
    def samples(self, instance: int, msg: wire.Results, ncpus: int,
                silent: bool = False) -> None:
        """Metrics of one Results frame; ``silent`` only primes the rates (--once).
        A domain already sampled for this tick is dropped and counted. A sample that
        cannot be made into metrics is left out, the others written, then BadSample."""
        out: list[Metric] = []
        bad = ""
        admitted = []
        for d in msg.domains:
            if not self.ledger.admit(d.uuid, msg.tick):
                self.duplicates[instance] = self.duplicates.get(instance, 0) + 1
                log.debug("virt-%d: a second sample of %s for %s dropped", instance, d.name,
                          msg.tick)
                continue
            admitted.append(d)
            try:
                out += self.builder.domain_metrics(instance, msg.tick, d, ncpus)
            except (ArithmeticError, ValueError, TypeError, KeyError, IndexError) as exc:
                # What a worker sends comes from outside: whatever it holds, the supervisor
                # goes on (the worker is replaced); never a traceback out of the loop.
                bad = f"{d.name[:60]!r}: {type(exc).__name__}: {str(exc)[:200]}"
        if not silent:
            self.emit(out)
            if self.prometheus is not None and admitted:
                self.prometheus.results(instance, wire.Results(msg.tick, admitted))
        if bad:
            raise BadSample(bad)

    def instance_done(self, instance: int, tick: float, values: dict[str, float]) -> None:
        """The collector's own metrics of one instance for a finished tick (once per tick:
        after a reload, the new worker's replay of a tick the old one finished is not)."""
        if not self.counted.admit(str(instance), tick):
            return
        naming = self.builder.naming
        values = {**values, "duplicate_samples": self.duplicates.get(instance, 0)}
        if self.prometheus is not None:
            self.prometheus.done(instance, tick, values)
        self.emit([Metric(naming.self_path(instance, k), v, tick, instance=instance)
                   for k, v in values.items()])

    def new_tick(self, ts: float, tracked: int) -> None:
        """A tick begins: the collector-wide metrics (``tracked`` per-domain entries)."""
        values: dict[str, float] = {"tracked_domains": tracked}
        if self.graphite:
            values["graphite_dropped"] = sum(g.dropped for g in self.graphite)
            values["graphite_buffered"] = sum(g.buffered for g in self.graphite)
        spooled = [g.report for g in self.graphite if isinstance(g, SpoolChannel)]
        if spooled:
            values["graphite_buffered"] += sum(r.get("buffered", 0) for r in spooled)
            for name, key in (("spool_lines", "spooled"), ("spool_bytes", "bytes"),
                              ("spool_drained_per_second", "drained"),
                              ("spool_corrupt_bytes", "corrupt")):
                values[name] = sum(r.get(key, 0) for r in spooled)
            values["spool_stranded_lines"] = self.stranded.lines(time.monotonic())
            oldest = [r["oldest"] for r in spooled if r.get("oldest")]
            if oldest:
                values["spool_oldest_timestamp"] = min(oldest)
        naming = self.builder.naming
        if self.prometheus is not None:
            self.prometheus.collector(values, ts)
        self.emit([Metric(naming.self_path(None, k), v, ts) for k, v in values.items()])

    def clock_stepped(self) -> None:
        """The wall clock stepped: ticks of the new clock may be older than those seen."""
        self.ledger.new_era()
        self.counted.new_era()  # a step back: the new, smaller ticks are counted too

    def forget_older_than(self, ts: float) -> set[str]:
        """Drop the state of domains not sampled since monotonic ``ts``; return their uuids."""
        gone = self.builder.forget_older_than(ts)
        self.ledger.forget(gone)
        return gone

    def tracked(self) -> int:
        """Domains held in the largest of the publisher's per-domain tables."""
        return max(self.builder.tracked(), self.ledger.tracked())

    def emit(self, metrics: Sequence[Metric]) -> None:
        """Hand a batch to every output (stdout may raise OutputClosed). Stdout that fails
        (a full disk) is one line in the log and dropped; the run goes on when Graphite
        destinations remain, else StdoutFailed ends it."""
        if not metrics:
            return
        for sink in self.graphite:
            sink.write(metrics)
        if self.stdout is not None:
            try:
                self.stdout.write(metrics)
            except StdoutFailed as exc:
                self.stdout = None
                if not self.graphite:
                    log.error("%s; nothing more can be written", exc)
                    raise
                log.error("%s; metrics go on to Graphite only", exc)

    # -- the supervisor's loop --------------------------------------------
    def next_wakeup(self) -> float | None:
        """Monotonic time the outputs next need the loop (a reconnect, a time limit)."""
        return min((w for g in self._channels() if (w := g.next_wakeup()) is not None),
                   default=None)

    def _channels(self) -> list[Any]:
        """What the selector waits on for the outputs: Graphite's, the exporter's."""
        return [*self.graphite, *([self.prometheus] if self.prometheus is not None else [])]

    def register(self, selector: selectors.BaseSelector) -> None:
        """Before every wait: let disconnected destinations try again, and register what
        each wants to wait for (its socket or its name lookup) with ``selector``."""
        self._selector = selector
        for sink in self._channels():
            sink.poll()
            want = sink.interest()
            had = self._registered.get(id(sink))
            if had is not None and (want is None or had[0] != want[0]):
                selector.unregister(had[0])
                had = None
            if want is not None:
                if had is None:
                    selector.register(want[0], want[1], ("graphite", sink))
                elif had[1] != want[1]:
                    selector.modify(want[0], want[1], ("graphite", sink))
            self._registered[id(sink)] = want

    @staticmethod
    def on_ready(sink: Destination, mask: int) -> None:
        """A destination's socket (or lookup) is ready."""
        sink.on_ready(mask)

    def unregister(self, selector: selectors.BaseSelector,
                   sink: Destination | PrometheusChannel) -> None:
        """Take one destination out of ``selector``."""
        had = self._registered.pop(id(sink), None)
        if had is not None:
            selector.unregister(had[0])

    def _prometheus(self, cfg: Config, old: PrometheusChannel | None) -> PrometheusChannel | None:
        """The exporter for ``cfg`` (None: off); ``old``'s listening socket is kept when
        the address is the same (a reload restarts the exporter, not the port)."""
        if cfg.prometheus is None:
            return None
        settings = exporter_settings(cfg)
        listening = old.listening if old is not None and old.endpoint == cfg.prometheus \
            else None
        channel = PrometheusChannel(cfg.prometheus, settings, listening)

        def release() -> None:
            if self._selector is not None:
                self.unregister(self._selector, channel)
        channel.on_close = release
        return channel

    def _destination(self, endpoint: Endpoint, cfg: Config) -> Destination:
        """A destination whose lines wait in memory, or are spooled (with ``spool_dir``);
        either leaves the selector before it closes what is registered there."""
        sink: Destination
        settings = spool_settings(cfg, endpoint)
        if settings is not None:
            sink = SpoolChannel(endpoint, settings)
        else:
            sink = GraphiteSink(endpoint, cfg.graphite_buffer, cfg.graphite_resend_seconds)

        def release() -> None:
            if self._selector is not None:
                self.unregister(self._selector, sink)
        sink.on_close = release
        return sink

    # -- reload and exit ----------------------------------------------------
    def reconfigure(self, old: Config, new: Config, selector: selectors.BaseSelector) -> None:
        """SIGHUP: naming and rates settings; reopen changed outputs. An unchanged Graphite
        destination keeps its connection and what it has queued."""
        self.builder.naming, self.builder.store_rates = new.naming(), new.store_rates
        self.builder.selection = new.selection()
        self.builder.rates.min_gap = rate_gap(new.interval)
        self.flush_timeout = new.flush_timeout
        if (new.use_stdout, new.format) != (old.use_stdout, old.format):
            before = self.stdout
            self.stdout = StdoutSink(new.format, spare=bool(new.graphite)) if new.use_stdout \
                else None
            if before is not None and self.stdout is not None:
                self.stdout.take_waiting(before)  # lines queued for the reader stay first
        elif self.stdout is not None:
            # Without Graphite the next write blocks, what is queued going first.
            self.stdout.spare = bool(new.graphite)
        self.stranded = stranded_spools(new, self.stranded.warned)
        kept = same_spool(old, new)
        # Only destinations still listed are kept; one removed is closed below.
        listed = set(new.graphite)
        keep = {sink.endpoint: sink for sink in self.graphite
                if kept and sink.endpoint in listed}
        for sink in self.graphite:
            if sink.endpoint in keep:
                sink.reconfigure(new.graphite_buffer, new.graphite_resend_seconds)
                if isinstance(sink, SpoolChannel):  # a respawned spooler starts with it
                    sink.settings = replace(sink.settings, flush_timeout=new.flush_timeout)
            else:
                self.unregister(selector, sink)
                if sink.buffered:
                    log.warning("SIGHUP: %s removed with %d lines not sent", sink,
                                sink.buffered)
                sink.close()
        self.graphite = [keep.get(ep) or self._destination(ep, new) for ep in new.graphite]
        self._reconfigure_prometheus(old, new)

    def _reconfigure_prometheus(self, old: Config, new: Config) -> None:
        """A changed exporter setting restarts the exporter (it refills within a tick)."""
        before = self.prometheus
        if before is not None and exporter_settings(new) == before.settings \
                and new.prometheus == before.endpoint:
            return
        if before is not None:
            before.close()
            if new.prometheus != before.endpoint:
                before.listening.close()
        self.prometheus = self._prometheus(new, before)

    def stop_writes(self) -> None:
        """A stop was asked: a stdout write in progress finishes if read, but not forever."""
        if self.stdout is not None:
            self.stdout.stopping = True

    def drop_stdout(self) -> None:
        """Nobody reads stdout any more."""
        self.stdout = None

    def finish(self, selector: selectors.BaseSelector) -> None:
        """At exit: send what Graphite destinations hold (and what waits for stdout's reader
        beside them), for ``flush_timeout`` at most, and wait for each destination to
        confirm; then close them."""
        limit = time.monotonic() + self.flush_timeout
        while any(g.buffered for g in self.graphite) and time.monotonic() < limit:
            if self.stdout is not None:  # what a slow reader takes meanwhile, never waiting
                self.stdout.flush_waiting(0.0, warn=False)
            self.register(selector)
            for key, mask in selector.select(min(0.1, max(0.0, limit - time.monotonic()))):
                kind, obj = key.data
                if kind == "graphite":
                    obj.on_ready(mask)
        for sink in self.graphite:
            if sink.buffered:
                log.warning("%s: %d lines not sent before exit", sink, sink.buffered)
            elif not sink.finish(limit):
                log.warning("%s: did not confirm the last lines before exit", sink)
            self.unregister(selector, sink)
            sink.close()
        if self.prometheus is not None:
            self.unregister(selector, self.prometheus)
            self.prometheus.shutdown()
        if self.stdout is not None:
            # Beside Graphite, stdout's reader gets what is left of the time (Graphite
            # first: stdout never holds it up); what it does not take is a warning.
            self.stdout.flush_waiting(limit)
