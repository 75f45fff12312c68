"""An exporter started again (crashed, killed, new settings) is given the recap of the
frames before it (recap.py): it must render what the old exporter rendered. The oracle
is the old exporter itself, fed every frame as the supervisor sent it."""

from __future__ import annotations

from typing import Any

import msgpack
from promlab import parse
from test_prometheus_families import HEALTHY, HUNG, sample

from vpartcollect import wire
from vpartcollect.output.prometheus.recap import Body, Recap
from vpartcollect.output.prometheus.server import Exporter, ExporterSettings
from vpartcollect.samples import DomainSample

SETTINGS = ExporterSettings(10.0, False, 2, 30.0)


class Feed:
    """The sink's side (channel.py): each frame to the recap, and packed to the old
    exporter as it would be over the socket pair."""

    def __init__(self, settings: ExporterSettings = SETTINGS) -> None:
        self.recap = Recap()
        self.old = Exporter(settings)

    def send(self, body: Body, tick: float, now: float = 0.0) -> None:
        self.recap.note(body, tick, now)
        self.old.frame(unpacked(body))

    def results(self, instance: int, tick: float, *samples: DomainSample) -> None:
        self.send(["results", instance, wire.encode(wire.Results(tick, list(samples)))], tick)

    def done(self, instance: int, tick: float, now: float = 0.0) -> None:
        self.send(["done", instance, tick, {"domains": 1.0}, [["frozen_qemus", "all", 0.0]]],
                  tick, now)

    def restarted(self, settings: ExporterSettings = SETTINGS, now: float = 0.0) -> Exporter:
        """A new exporter given the recap."""
        new = Exporter(settings)
        for body in self.recap.frames(settings.instances, now):
            new.frame(unpacked(body))
        return new


def unpacked(body: Body) -> Any:
    return msgpack.unpackb(msgpack.packb(body, use_bin_type=True), raw=False)


def body(exporter: Exporter) -> str:
    return exporter.render(None)[0].decode()


def test_a_new_exporter_renders_what_the_old_one_did() -> None:
    """Two finished ticks of two instances, a third under way for one, collector values."""
    feed = Feed()
    for tick in (100.0, 110.0):
        feed.send(["collector", {"ticks": tick}, tick], tick)
        feed.results(0, tick, sample("a", HEALTHY), sample("b", HEALTHY))
        feed.results(0, tick, sample("c", HEALTHY))  # a second chunk of the tick
        feed.done(0, tick)
        feed.results(1, tick, sample("d", HEALTHY))
        feed.done(1, tick)
    feed.results(1, 120.0, sample("d", HUNG, True))  # virt-1 is in tick 120
    feed.results(1, 120.0, sample("e", HEALTHY))
    old = body(feed.old)
    assert {"a", "b", "c", "d", "e"} <= {dict(k).get("domain") for s in parse(old).values()
                                         for k in s}
    assert "libvirt_up 1.0" in old
    assert body(feed.restarted()) == old


def test_a_tick_its_worker_never_finished_is_not_replayed_beside_the_next() -> None:
    """Results of a later tick end the held ones (their worker was killed mid-tick)."""
    feed = Feed(ExporterSettings(10.0, False, 1, 30.0))
    feed.results(0, 100.0, sample("a", HEALTHY), sample("gone", HEALTHY))
    feed.results(0, 110.0, sample("a", HUNG, True))  # 100 never finished
    feed.done(0, 110.0)  # "gone" was not sampled at 110: the old board dropped it
    old = body(feed.old)
    assert 'domain="gone"' not in old and 'domain="a"' in old
    assert body(feed.restarted(ExporterSettings(10.0, False, 1, 30.0))) == old
    assert len(feed.recap.frames(1, 0.0)) == 2  # a's sample at 110, and its done


def test_libvirt_up_is_aged_from_when_the_tick_finished_not_from_the_replay() -> None:
    feed = Feed()
    for instance in (0, 1):
        feed.results(instance, 100.0, sample(f"d{instance}", HEALTHY))
        feed.done(instance, 100.0, now=1000.0)
    assert "libvirt_up 1.0" in body(feed.restarted(now=1010.0))
    # up_within is 30 s: a tick finished 40 s before the restart is not recent
    assert "libvirt_up 0.0" in body(feed.restarted(now=1040.0))


def test_fewer_instances_hand_the_removed_ones_domains_to_virt_0() -> None:
    """A reload from 2 instances to 1: virt-1's domains stay on the new board (no scrape
    finds them gone) until virt-0 finishes a tick without them; virt-1's own values
    go, and a later restart does not bring them back."""
    feed = Feed()
    for instance, name in ((0, "a"), (1, "b")):
        feed.results(instance, 100.0, sample(name, HEALTHY))
        feed.done(instance, 100.0)
    one = ExporterSettings(10.0, False, 1, 30.0)
    new = feed.restarted(one)
    text = body(new)
    assert 'domain="a"' in text and 'domain="b"' in text
    assert 'partition="virt-1"' not in text and "libvirt_up 1.0" in text
    new.frame(unpacked(["results", 0, wire.encode(wire.Results(110.0, [sample("a", HEALTHY)]))]))
    new.frame(unpacked(["done", 0, 110.0, {}, []]))
    assert 'domain="b"' not in body(new)  # b went with its instance
    assert all(body[1] == 0 for body in feed.recap.frames(1, 0.0))
