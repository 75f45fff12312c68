"""Opening libvirt connections the way every part of vpartcollect wants them."""

from __future__ import annotations

from typing import Any

import libvirt


def open_readonly(uri: str) -> Any:
    """A read-only connection: collecting (and planning) needs no write access."""
    return libvirt.openReadOnly(uri)


def quiet_libvirt() -> None:
    """Stop libvirt from printing every error to stderr; we report them ourselves."""
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def error_text(exc: libvirt.libvirtError) -> str:
    """libvirt's message for ``exc`` on one line."""
    return " ".join(str(exc.get_error_message() or exc).split())
