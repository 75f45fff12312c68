"""How each domain is asked this cycle, from what is known before any call. Pure.

- ``NORMAL``: every group, NOWAIT (the usual bulk call).
- ``FROZEN``: QEMU's main thread cannot serve the monitor (seen in /proc): only what
  libvirtd answers without QEMU (bulk state and interface; per-domain info, vcpus,
  getCPUStats), flagged unresponsive. Costs no libvirtd thread.
- ``NO_BLOCK``: its datastore does not answer: every group but block (which makes QEMU
  stat() the image and hang on it), flagged unresponsive.
- ``HOLD``: not asked at all, flagged unresponsive: a call on it alone has not
  returned, or it was in a call that hung, /proc cannot vouch for its QEMU and a second
  call of ours is already blocked. Asking again could leave one more blocked in libvirtd.
"""

from __future__ import annotations

import enum


class Route(enum.Enum):
    """The ways a domain can be sampled (see the module docstring)."""

    NORMAL = "normal"
    FROZEN = "frozen"
    NO_BLOCK = "no-block"
    HOLD = "hold"


def route(*, frozen: bool, stalled: bool, seen: bool, in_hung_call: bool,
          alone_in_hung_call: bool, blocked: int) -> Route:
    """Route one domain.

    ``frozen``: its QEMU main thread is stopped or waiting on storage (two reads
    agree); ``stalled``: a datastore of its disks does not answer; ``seen``: its QEMU
    process was found, so /proc can vouch for it; ``in_hung_call``: it is one of the
    domains of a call that is still blocked in libvirtd; ``alone_in_hung_call``: it is
    the only domain of such a call.
    """
    if frozen:
        # The calls of this route need the domain's object lock, never its monitor job:
        # a frozen QEMU's earlier hung call holds only the job.
        return Route.FROZEN
    if alone_in_hung_call or (in_hung_call and not seen and blocked > 1):
        return Route.HOLD
    if stalled:
        return Route.NO_BLOCK
    return Route.NORMAL
