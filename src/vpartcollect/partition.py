"""Domain tags and the partition rule (collectd's virt ``Instances``), as pure functions.

Instance ``i`` (0 <= i < instances) owns the domains tagged ``virt-i``; ``virt-0``
always exists and adopts untagged domains and every tag outside the configured
range. The tag is the stripped text of ``{TAG_NS}tag`` in the domain's
``<metadata>``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

TAG_NS = "http://ovirt.org/ovirtmap/tag/1.0"
TAG_PREFIX = "ovirtmap"
_TAG_ELEMENT = f"{{{TAG_NS}}}tag"

REASON_MATCH = "tag match"
REASON_ADOPTED = "adopted by instance #0"


class TagError(ValueError):
    """The metadata could not be read as a tag (malformed or hostile XML)."""


@dataclass(frozen=True)
class Assignment:
    """Which instance samples a domain, and why (the seed's tables)."""

    instance: int
    reason: str


def instance_name(index: int) -> str:
    """The tag an instance owns: ``virt-<index>``."""
    return f"virt-{index}"


def parse_tag(xml: str | None) -> str | None:
    """Return the tag in a metadata element (or whole domain XML), or None when absent.

    ``xml`` is what ``virDomainGetMetadata(ELEMENT, TAG_NS)`` returns (the tag
    element itself, which libvirt hands back without its namespace) or a full
    domain/metadata document. Raises TagError for XML
    that is malformed or uses DTDs, entities or external references.
    """
    if xml is None or not xml.strip():
        return None
    try:
        root = SafeET.fromstring(xml, forbid_dtd=True)
    except (ET.ParseError, DefusedXmlException) as exc:
        raise TagError(f"unreadable tag metadata: {exc}") from None
    node = root if root.tag in (_TAG_ELEMENT, "tag") else root.find(f".//{_TAG_ELEMENT}")
    if node is None:
        return None
    text = "".join(node.itertext()).strip()
    return text or None


def tag_element(tag: str, namespaced: bool = False) -> str:
    """The metadata element that carries ``tag``.

    virDomainSetMetadata wants it bare (``<tag>``): libvirt puts it in TAG_NS under
    the prefix it is given. ``namespaced`` gives the form found in domain XML.
    """
    escaped = tag.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    if namespaced:
        return f'<{TAG_PREFIX}:tag xmlns:{TAG_PREFIX}="{TAG_NS}">{escaped}</{TAG_PREFIX}:tag>'
    return f"<tag>{escaped}</tag>"


def assign(tag: str | None, instances: int) -> Assignment:
    """Apply the seed's rule: the owner of ``tag`` among ``instances`` readers."""
    if instances < 1:
        raise ValueError("instances must be at least 1")
    if tag is not None and tag.startswith("virt-"):
        number = tag[len("virt-") :]
        # Only the canonical spelling matches: "virt-01" or "virt-+1" is foreign.
        if number.isdigit() and number == str(int(number)) and int(number) < instances:
            return Assignment(int(number), REASON_MATCH)
    return Assignment(0, REASON_ADOPTED)


def is_valid_tag(tag: str) -> bool:
    """True for a tag ``vpartcollect tag`` may write: ``virt-N`` with N a plain number."""
    number = tag[len("virt-") :] if tag.startswith("virt-") else ""
    return number.isdigit() and number == str(int(number))
