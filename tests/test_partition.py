"""The partition rule, row by row against the seed's four example tables."""

from __future__ import annotations

import pytest
from seed_tables import SEED_EXAMPLES

from vpartcollect.partition import (
    REASON_ADOPTED,
    TAG_NS,
    TagError,
    assign,
    is_valid_tag,
    parse_tag,
    tag_element,
)

ROWS = [(name, instances, *row) for name, (instances, rows) in SEED_EXAMPLES.items()
        for row in rows]


@pytest.mark.parametrize(("example", "instances", "domain", "tag", "instance", "reason"), ROWS)
def test_seed_tables(example: str, instances: int, domain: str, tag: str | None,
                     instance: int, reason: str) -> None:
    got = assign(tag, instances)
    assert (got.instance, got.reason) == (instance, reason)


@pytest.mark.parametrize("tag", ["virt-01", "virt-+1", "virt-", "virt-1 ", "VIRT-1", "virt-1x",
                                 "storage-a", "", "virt-\u00b2", "virt-\u0661", "virt-1\u00b2",
                                 "virt-" + "9" * 5000, "virt-1_0", "virt-1\n"])
def test_foreign_spellings_are_adopted(tag: str) -> None:
    assert assign(tag, 5) == assign(None, 5)
    assert assign(tag, 5).reason == REASON_ADOPTED


def test_one_instance_takes_everything() -> None:
    assert {assign(t, 1).instance for t in ("virt-0", "virt-1", None, "x")} == {0}


def test_instances_must_be_positive() -> None:
    with pytest.raises(ValueError):
        assign("virt-0", 0)


def test_tag_from_metadata_element_as_libvirt_returns_it() -> None:
    # virDomainGetMetadata(ELEMENT, ns) hands back the element without its namespace.
    assert parse_tag("<tag>virt-3</tag>") == "virt-3"


def test_tag_from_domain_xml_with_surrounding_whitespace() -> None:
    xml = (f'<domain><metadata>\n  <ovirtmap:tag xmlns:ovirtmap="{TAG_NS}">\n'
           "     virt-2\n  </ovirtmap:tag>\n</metadata></domain>")
    assert parse_tag(xml) == "virt-2"


def test_other_namespaces_are_not_tags() -> None:
    assert parse_tag('<domain><metadata><x:tag xmlns:x="urn:other">virt-1</x:tag>'
                     "</metadata></domain>") is None


@pytest.mark.parametrize("xml", [None, "", "   ", "<tag></tag>", "<tag>  </tag>"])
def test_absent_or_empty_tag_is_untagged(xml: str | None) -> None:
    assert parse_tag(xml) is None


@pytest.mark.parametrize("xml", [
    "<tag>virt-1",  # malformed
    '<!DOCTYPE t [<!ENTITY x "virt-1">]><tag>&x;</tag>',  # entity
    '<!DOCTYPE t [<!ENTITY x SYSTEM "file:///etc/passwd">]><tag>&x;</tag>',  # external
    "<!DOCTYPE tag><tag>virt-1</tag>",  # any DTD at all
])
def test_hostile_or_broken_xml_raises_tag_error(xml: str) -> None:
    with pytest.raises(TagError):
        parse_tag(xml)


def test_tag_element_round_trips_and_escapes() -> None:
    assert parse_tag(tag_element("virt-4")) == "virt-4"
    assert parse_tag(tag_element("a<b&c")) == "a<b&c"
    assert parse_tag(f"<domain><metadata>{tag_element('virt-4', namespaced=True)}"
                     "</metadata></domain>") == "virt-4"


def test_an_overlong_tag_is_malformed_not_carried() -> None:
    with pytest.raises(TagError, match="tag of 5005 characters"):
        parse_tag(f"<tag>virt-{'9' * 5000}</tag>")


@pytest.mark.parametrize(("tag", "ok"), [("virt-0", True), ("virt-12", True), ("virt-01", False),
                                         ("virt-", False), ("foo", False), ("virt-\u00b2", False),
                                         ("virt-" + "1" * 5000, False)])
def test_valid_tags(tag: str, ok: bool) -> None:
    assert is_valid_tag(tag) is ok
