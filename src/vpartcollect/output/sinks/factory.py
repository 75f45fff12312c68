"""The one place sinks are made from the configuration, and told apart by kind.

Each kind of sink is a function from the configuration to what it asks for: a
key per output (the same output in a reloaded configuration has the same key,
and its sink is kept when it agrees) and how to make one. Graphite destinations
come first, kinds registered with ``register_kind`` next, stdout last (at exit
it gets the time the others leave). A new kind of output is a new kind here;
the publisher never names one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path

from vpartcollect.config import Config, Endpoint
from vpartcollect.output.sinks.base import Sink, SinkBase
from vpartcollect.output.sinks.graphite import GraphiteSink
from vpartcollect.output.sinks.spool import Stranded
from vpartcollect.output.sinks.spool_channel import SpoolChannel
from vpartcollect.output.sinks.spooler import SpoolSettings
from vpartcollect.output.sinks.stdout import StdoutSink

Wanted = tuple[Hashable, Callable[[], Sink]]
Kind = Callable[[Config], Iterator[Wanted]]


def spool_settings(cfg: Config, endpoint: Endpoint | None = None) -> SpoolSettings | None:
    """How a destination's lines are spooled (None: not at all); one directory each."""
    if not cfg.spool_dir:
        return None
    where = Path(cfg.spool_dir)
    if endpoint is not None:
        where = where / f"{endpoint.host}_{endpoint.port}".replace("/", "_").lstrip(".")
    return SpoolSettings(where, cfg.spool_max_bytes, cfg.spool_drain_rate,
                         cfg.graphite_buffer, cfg.graphite_resend_seconds, cfg.flush_timeout)


def _spool_identity(settings: SpoolSettings | None) -> SpoolSettings | None:
    """What a spool is, without the bounds a running spooler takes over (its key)."""
    if settings is None:
        return None
    return replace(settings, max_lines=0, resend_seconds=0, flush_timeout=0)


def same_spool(old: Config, new: Config) -> bool:
    """Whether a reload keeps the spool as it is: only the memory bound, the resend
    window (applied to the running spoolers) or the flush timeout differ, or nothing.
    A running spooler keeps the flush timeout it started with: at exit the supervisor
    waits for it the new one at most, and what it has not sent by then stays on disk."""
    return _spool_identity(spool_settings(old)) == _spool_identity(spool_settings(new))


def stranded_spools(cfg: Config, warned: set[str] | None = None) -> Stranded:
    """What the spool directory holds for destinations ``cfg`` does not list."""
    in_use = {s.directory.name for ep in cfg.graphite
              if (s := spool_settings(cfg, ep)) is not None}
    return Stranded(Path(cfg.spool_dir) if cfg.spool_dir else None, in_use, warned)


class StrandedSpools(SinkBase):
    """The spool directory's lines of destinations no longer listed: a self-metric only."""

    writes = False

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.stranded = stranded_spools(cfg)

    def __str__(self) -> str:
        return f"spool {self.stranded.root}"

    def self_metrics(self) -> dict[str, float]:
        """``spool_stranded_lines`` beside spooled destinations."""
        if not self.stranded.in_use:
            return {}
        return {"spool_stranded_lines": self.stranded.lines(time.monotonic())}

    def reconfigure(self, old: Config, new: Config) -> bool:
        """Counted again for the destinations ``new`` lists (each directory warned once)."""
        self.stranded = stranded_spools(new, self.stranded.warned)
        return True


def graphite_sinks(cfg: Config) -> Iterator[Wanted]:
    """One sink per destination: its lines wait in memory, or are spooled (``spool_dir``)."""
    for endpoint in cfg.graphite:
        settings = spool_settings(cfg, endpoint)
        key = ("graphite", endpoint, _spool_identity(settings))
        if settings is None:
            yield key, partial(GraphiteSink, endpoint, cfg.graphite_buffer,
                               cfg.graphite_resend_seconds)
        else:
            yield key, partial(SpoolChannel, endpoint, settings)
    if cfg.spool_dir:
        yield ("spool directory",), partial(StrandedSpools, cfg)


def prometheus_sink(cfg: Config) -> Iterator[Wanted]:
    """The Prometheus endpoint, when one is configured."""
    if cfg.prometheus is not None:  # prometheus_client is imported only when it is on
        from vpartcollect.output.prometheus.channel import PrometheusSink, exporter_settings
        yield ("prometheus", cfg.prometheus), partial(PrometheusSink, cfg.prometheus,
                                                      exporter_settings(cfg))


def stdout_sink(cfg: Config) -> Iterator[Wanted]:
    """Stdout, when it is on."""
    if cfg.use_stdout:
        yield ("stdout",), partial(StdoutSink, cfg.format)


_KINDS: list[Kind] = [graphite_sinks, prometheus_sink]


def register_kind(kind: Kind) -> Kind:
    """Add a kind of sink (after Graphite's, before stdout); usable as a decorator."""
    _KINDS.append(kind)
    return kind


def unregister_kind(kind: Kind) -> None:
    """Take a kind added by ``register_kind`` out again."""
    _KINDS.remove(kind)


def wanted(cfg: Config) -> list[Wanted]:
    """Every sink ``cfg`` asks for, in the order they are written to and finished."""
    return [w for kind in [*_KINDS, stdout_sink] for w in kind(cfg)]
