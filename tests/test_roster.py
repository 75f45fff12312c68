"""The supervisor's per-domain knowledge: names, tags for new workers, suspects."""

from __future__ import annotations

from vpartcollect import wire
from vpartcollect.roster import Roster


def test_roster_keeps_names_tags_and_suspects_until_forgotten() -> None:
    roster = Roster()
    roster.suspect(2, ["a", "b"])
    roster.seen(2, wire.DomainSample("a", "vm-a", "virt-2", False, {}, 0.0, "lbl"))
    roster.seen(2, wire.DomainSample("b", "vm-b", None, True, {}, 0.0))
    assert roster.suspects_of(2) == ["b"]  # a answered, b is still stuck
    assert roster.seed() == {"a": ("vm-a", "virt-2", "lbl", None), "b": ("vm-b", None, None, None)}
    assert roster.name("a") == "vm-a" and roster.name("zz") == "zz"
    roster.forget({"a", "b"})
    assert roster.size() == 0 and roster.suspects_of(2) == []


def test_interfaces_are_kept_from_the_sample_that_says_them_until_forgotten() -> None:
    """A worker says a domain's interfaces when it first knows them or they change (None
    else): the roster keeps the last said, for a worker respawned in an outage."""
    roster = Roster()
    said = [("vnet0", True), ("macvtap1", False)]
    roster.seen(1, wire.DomainSample("a", "vm-a", "virt-1", False, {}, 0.0, None, None, said))
    roster.seen(1, wire.DomainSample("a", "vm-a", "virt-1", False, {}, 1.0))  # unchanged
    assert roster.seed() == {"a": ("vm-a", "virt-1", None, said)}
    replugged = [("vnet0", True)]
    roster.seen(1, wire.DomainSample("a", "vm-a", "virt-1", False, {}, 2.0, None, None,
                                     replugged))
    assert roster.seed()["a"][3] == replugged
    roster.forget({"a"})
    assert roster.size() == 0 and roster.seed() == {}
