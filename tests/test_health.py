"""The host's health values of one tick (issue 27): pure."""

from __future__ import annotations

from vpartcollect import wire
from vpartcollect.health import MAX_INSTANCE_CHARS, health_values, p50, valid
from vpartcollect.worker.qemu_proc import (
    FS_WAIT_SECONDS,
    IO_WAIT_SECONDS,
    STOPPED_SECONDS,
    frozen_why,
)


def test_health_values_of_a_tick() -> None:
    values = health_values({"nfs:srv:/x": (False, 12.5), "/srv/local": (True, 0.0)},
                           ["stopped", "stopped", "filesystem"],
                           {"stats": [0.004, 0.002, 0.3], "list": [0.01], "frozen": []})
    assert values == [
        ("datastore_answering", "/srv/local", 1), ("datastore_silent_seconds", "/srv/local", 0),
        ("datastore_answering", "nfs:srv:/x", 0), ("datastore_silent_seconds", "nfs:srv:/x", 12.5),
        ("frozen_qemus", "stopped", 2), ("frozen_qemus", "filesystem", 1),
        ("frozen_qemus", "d_state", 0), ("frozen_qemus", "all", 3),
        ("libvirtd_seconds", "list_p50", 0.01), ("libvirtd_seconds", "list_max", 0.01),
        ("libvirtd_seconds", "stats_p50", 0.004), ("libvirtd_seconds", "stats_max", 0.3),
    ]  # a kind not called this tick ("frozen") has no value, not a 0 that looks fast
    assert all(valid(v, 256) is None for v in values)


def test_p50_is_a_value_seen() -> None:
    assert p50([3.0]) == 3.0
    assert p50([4.0, 1.0, 2.0, 3.0]) == 2.0
    assert p50([5.0, 1.0, 9.0]) == 5.0


def test_what_a_worker_may_not_send() -> None:
    assert valid(("secret", "x", 1), 256) is not None
    assert valid(("frozen_qemus", "", 1), 256) is not None
    assert valid(("frozen_qemus", "x" * 257, 1), 256) is not None
    assert valid(("frozen_qemus", "all", float("inf")), 256) is not None
    assert valid(("frozen_qemus", "all", -1), 256) is not None


def test_why_a_qemu_is_frozen() -> None:
    assert frozen_why(STOPPED_SECONDS) == "stopped"
    assert frozen_why(FS_WAIT_SECONDS) == "filesystem"
    assert frozen_why(IO_WAIT_SECONDS) == "d_state"


def test_a_datastore_name_past_the_wire_limit_is_clipped_and_stays_distinct() -> None:
    """Review of issue 27: a name over 256 characters made every Done frame invalid (the
    worker killed each tick)."""
    a, b = "/srv/" + "a" * 300 + "/one", "/srv/" + "a" * 300 + "/two"
    values = health_values({a: (True, 0.0), b: (False, 3.0), "/short": (True, 0.0)}, [], {})
    names = {inst for typ, inst, _ in values if typ == "datastore_answering"}
    assert len(names) == 3 and "/short" in names
    for value in values:
        assert valid(value, MAX_INSTANCE_CHARS) is None
    done = wire.Done(1.0, 0.1, 3, health=values)
    assert wire.FrameDecoder().feed(wire.encode(done)) == [done]
