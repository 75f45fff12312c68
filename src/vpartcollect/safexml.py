"""The one way XML from outside (domain descriptions, metadata) is parsed: defusedxml,
no DTDs, entities or external references, and a one-line error."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException


class XMLRefused(ValueError):
    """Malformed, or using DTDs, entities or external references."""


def parse(text: str) -> ET.Element:
    """The root element of ``text``, or XMLRefused with a one-line reason."""
    try:
        root: ET.Element = SafeET.fromstring(text, forbid_dtd=True)
    except (ET.ParseError, DefusedXmlException) as exc:
        raise XMLRefused(" ".join(str(exc).split())) from None
    return root
