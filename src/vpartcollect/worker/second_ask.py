"""The second ask: a healthy domain whose NOWAIT answer lacked the monitor's part. Pure.

NOWAIT skips a domain's monitor part when another call holds its job at that
moment: another client's, or one of ours that hung on a frozen partition-mate
and goes on to the next domains at the thaw (measured: 3 of 16 thaws cost a
mate its block stats). Such a domain is asked once more, ASK_AGAIN_AFTER later,
at the end of the cycle, and only the better of its two answers is sent: one
sample per tick, never two.
"""

from __future__ import annotations

from dataclasses import dataclass

from vpartcollect.worker.inventory import Domain
from vpartcollect.worker.libvirt_stats import Answer, monitor_skipped

ASK_AGAIN_AFTER = 0.05  # seconds after the first answer


@dataclass
class Held:
    """A first answer kept back for a second ask (not sent yet)."""

    dom: Domain
    answer: Answer
    unresponsive: bool
    at: float  # monotonic time of the first answer


def wanted(answer: Answer, suspect: bool, stuck: bool) -> bool:
    """Whether to ask again: the monitor's part was skipped, and neither is the domain a
    suspect (a call on it hung) nor does libvirt report its monitor stuck (a job held for
    long is no passing collision; it would be asked again, 50 ms later, every cycle)."""
    return not suspect and not stuck and monitor_skipped(answer.stats)


def better(first: Held, second: Answer | None, second_stuck: bool) -> tuple[Answer, bool]:
    """The answer to send, and its unresponsive flag: the second if it is fuller."""
    if second is not None and not monitor_skipped(second.stats):
        return second, second_stuck
    return first.answer, first.unresponsive
