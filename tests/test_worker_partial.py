"""A healthy domain whose NOWAIT answer lacked the monitor's part is asked once more.

FAKE: the reader below stands in for libvirt at the one moment that matters: another
call holds the domain's job while ours runs, so NOWAIT skips its monitor part. The
real fault (a call hung on a frozen partition-mate goes on to the next domains at the
thaw) costs a sample on about 3 thaws in 16 and cannot be produced on demand; the
worker around the fake is the real one, and so are its frames.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from vpartcollect import wire
from vpartcollect.config import load
from vpartcollect.inventory import Domain
from vpartcollect.worker import Worker

FULL = {"state.state": 1, "block.count": 1, "block.0.name": "vda",
        "block.0.rd.reqs": 7, "block.0.capacity": 1024}
SKIPPED = {"state.state": 1, "block.count": 1, "block.0.name": "vda"}  # NOWAIT, job held


class FakeReader:
    """FAKE libvirt reader: hands out the prepared answers, one per call."""

    block_in_bulk = False

    def __init__(self, answers: list[dict[str, dict[str, Any]]]) -> None:
        self.answers = answers
        self.asked: list[list[str]] = []

    def collect(self, chunk: Sequence[Domain], block: bool = True) -> dict[str, Any]:
        self.asked.append([d.name for d in chunk])
        return self.answers.pop(0)


class Handle:
    """controlInfo of an idle monitor (or of one occupied for ``busy_ms``)."""

    def __init__(self, busy_ms: int | None = None) -> None:
        self.busy_ms = busy_ms

    def controlInfo(self) -> list[int]:  # libvirt spells it so
        return [0, 0, 0] if self.busy_ms is None else [2, 0, self.busy_ms]


@pytest.fixture
def worker() -> Iterator[tuple[Worker, int]]:
    r, w = os.pipe()
    ctl_r, ctl_w = os.pipe()
    wk = Worker(0, load(None, {"connect": "test:///default"}), ctl_r, w)
    yield wk, r
    for fd in (r, w, ctl_r, ctl_w):
        os.close(fd)


def samples(fd: int) -> list[tuple[str, bool]]:
    """(domain name, whether its stats carry block I/O) of every Results frame sent."""
    os.set_blocking(fd, False)
    frames = wire.FrameDecoder().feed(os.read(fd, 1 << 20))
    return [(d.name, "block.0.rd.reqs" in d.stats)
            for f in frames if isinstance(f, wire.Results) for d in f.domains]


def dom(name: str, busy_ms: int | None = None) -> Domain:
    return Domain(Handle(busy_ms), f"uuid-{name}", name, "virt-0", 0.0)


def test_a_skipped_monitor_part_is_asked_again_and_sent_once(
        worker: tuple[Worker, int]) -> None:
    wk, out = worker
    a, b = dom("a"), dom("b")
    wk.reader = FakeReader([{a.uuid: dict(FULL), b.uuid: dict(SKIPPED)},
                            {b.uuid: dict(FULL)}])  # type: ignore[assignment]
    wk._stats(100.0, [a, b], set())
    wk._ask_partial_again()
    assert wk.reader.asked == [["a", "b"], ["b"]]  # type: ignore[union-attr]
    assert sorted(samples(out)) == [("a", True), ("b", True)]


def test_no_better_second_answer_sends_the_first(worker: tuple[Worker, int]) -> None:
    wk, out = worker
    b = dom("b")
    wk.reader = FakeReader([{b.uuid: dict(SKIPPED)},
                            {b.uuid: dict(SKIPPED)}])  # type: ignore[assignment]
    wk._stats(100.0, [b], set())
    wk._ask_partial_again()
    assert samples(out) == [("b", False)]  # one sample, never two for one tick


def test_a_full_answer_or_a_suspect_is_not_asked_again(worker: tuple[Worker, int]) -> None:
    wk, out = worker
    a, s = dom("a"), dom("s")
    wk.reader = FakeReader([{a.uuid: dict(FULL), s.uuid: dict(SKIPPED)}])  # type: ignore[assignment]
    wk._stats(100.0, [a, s], {s.uuid})  # s: a call on it hung before
    wk._ask_partial_again()
    assert wk.reader.asked == [["a", "s"]]  # type: ignore[union-attr]
    assert sorted(samples(out)) == [("a", True), ("s", False)]


def test_a_monitor_libvirt_reports_stuck_is_not_asked_again(worker: tuple[Worker, int]) -> None:
    wk, out = worker
    b = dom("b", busy_ms=5000)  # its job held for 5 s: no passing collision
    wk.reader = FakeReader([{b.uuid: dict(SKIPPED)}])  # type: ignore[assignment]
    wk._stats(100.0, [b], set())
    wk._ask_partial_again()
    assert wk.reader.asked == [["b"]]  # type: ignore[union-attr]
    assert samples(out) == [("b", False)]


def test_a_domain_whose_store_died_meanwhile_is_not_asked_again(
        worker: tuple[Worker, int]) -> None:
    """FAKE, too: the probes say the store is dead (a real stall is test_outages')."""
    wk, out = worker
    b = dom("b")
    b.disks, b.stores = [("vda", "/s/b.img")], {"/s": ["/s/b.img"]}
    wk.reader = FakeReader([{b.uuid: dict(SKIPPED)}])  # type: ignore[assignment]
    wk._stats(100.0, [b], set())
    wk.probes.dead = lambda: {"/s"}  # type: ignore[method-assign]
    wk._ask_partial_again()
    assert wk.reader.asked == [["b"]]  # type: ignore[union-attr]
    assert samples(out) == [("b", False)]
