"""Domain tags and the partition rule (collectd's virt ``Instances``), as pure functions.

Instance ``i`` (0 <= i < instances) owns the domains tagged ``virt-i``; ``virt-0``
always exists and adopts untagged domains and every tag outside the configured
range. The tag is the stripped text of ``{TAG_NS}tag`` in the domain's
``<metadata>``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vpartcollect import safexml

TAG_NS = "http://ovirt.org/ovirtmap/tag/1.0"
TAG_PREFIX = "ovirtmap"
_TAG_ELEMENT = f"{{{TAG_NS}}}tag"

# A tag longer than this is not one a management system wrote: treated as malformed.
MAX_TAG_LENGTH = 256
# ``virt-N`` with N in ASCII digits, no sign, no leading zero, and short enough that no
# conversion can fail: str.isdigit() would accept "²", which int() then refuses.
_CANONICAL = re.compile(r"virt-(0|[1-9][0-9]{0,8})")

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
        root = safexml.parse(xml)
    except safexml.XMLRefused as exc:
        raise TagError(f"unreadable tag metadata: {exc}") from None
    node = root if root.tag in (_TAG_ELEMENT, "tag") else root.find(f".//{_TAG_ELEMENT}")
    if node is None:
        return None
    text = "".join(node.itertext()).strip()
    if len(text) > MAX_TAG_LENGTH:
        raise TagError(f"tag of {len(text)} characters (at most {MAX_TAG_LENGTH})")
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
    number = tag_number(tag)
    # Only the canonical spelling matches: "virt-01", "virt-+1" or "virt-²" is foreign.
    if number is not None and number < instances:
        return Assignment(number, REASON_MATCH)
    return Assignment(0, REASON_ADOPTED)


def tag_number(tag: str | None) -> int | None:
    """N of a canonical ``virt-N`` tag; None for no tag or any other spelling."""
    match = _CANONICAL.fullmatch(tag) if tag is not None else None
    return int(match.group(1)) if match else None


def is_valid_tag(tag: str) -> bool:
    """True for a tag of the seed's scheme: ``virt-N`` with N a plain number."""
    return tag_number(tag) is not None
