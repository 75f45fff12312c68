"""A test sink, registered through the sink factory as any new kind of output would be."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

from vpartcollect.config import Config
from vpartcollect.health import HealthValue
from vpartcollect.output.metrics import Metric, format_line
from vpartcollect.output.sinks.base import SinkBase
from vpartcollect.output.sinks.factory import Wanted, register_kind, unregister_kind
from vpartcollect.samples import DomainSample


class CaptureSink(SinkBase):
    """Keeps what the publisher hands it: metrics, raw samples, ends of ticks, calls."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.metrics: list[Metric] = []
        self.raw: list[tuple[int, float, DomainSample]] = []
        self.ticks: list[tuple[int, float]] = []
        self.calls: list[str] = []
        self.report: dict[str, float] = {}
        self.others = -1
        self.own: dict[int, dict[str, float]] = {}
        self.started: list[tuple[float, dict[str, float]]] = []
        self.forgotten: set[str] = set()

    def __str__(self) -> str:
        return "capture"

    @property
    def lines(self) -> list[str]:
        """What it was handed, as plaintext lines."""
        return [format_line(m.path, m.value, m.ts) for m in self.metrics]

    def write(self, metrics: Sequence[Metric]) -> None:
        self.metrics += metrics

    def samples(self, instance: int, tick: float, samples: Sequence[DomainSample]) -> None:
        self.raw += [(instance, tick, s) for s in samples]

    def tick_done(self, instance: int, tick: float, values: Mapping[str, float],
                  health: Sequence[HealthValue] = ()) -> None:
        self.ticks.append((instance, tick))
        self.own[instance] = dict(values)

    def tick_started(self, tick: float, values: Mapping[str, float]) -> None:
        self.started.append((tick, dict(values)))

    def forget(self, uuids: set[str]) -> None:
        self.forgotten |= uuids

    def beside(self, others: int) -> None:
        self.others = others

    def self_metrics(self) -> Mapping[str, float]:
        return self.report

    def reconfigure(self, old: Config, new: Config) -> bool:
        self.calls.append("reconfigure")
        self.cfg = new
        return True

    def finish(self, deadline: float) -> bool:
        self.calls.append("finish")
        return True

    def close(self) -> None:
        self.calls.append("close")
        super().close()


@contextlib.contextmanager
def capture_sinks() -> Iterator[list[CaptureSink]]:
    """While open, every configuration also asks for a CaptureSink; yields those made."""
    made: list[CaptureSink] = []

    def make(cfg: Config) -> CaptureSink:
        made.append(CaptureSink(cfg))
        return made[-1]

    def kind(cfg: Config) -> Iterator[Wanted]:
        yield ("capture",), lambda: make(cfg)

    register_kind(kind)
    try:
        yield made
    finally:
        unregister_kind(kind)
