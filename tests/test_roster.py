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
    assert roster.seed() == {"a": ("vm-a", "virt-2", "lbl"), "b": ("vm-b", None, None)}
    assert roster.name("a") == "vm-a" and roster.name("zz") == "zz"
    roster.forget({"a", "b"})
    assert roster.size() == 0 and roster.suspects_of(2) == []
