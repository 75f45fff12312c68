"""The second ask: a healthy domain whose NOWAIT answer lacked the monitor's part. Pure.

NOWAIT skips a domain's monitor part when another call holds its job at that
moment: another client's, or one of ours that hung on a frozen partition-mate
and goes on to the next domains at the thaw (measured: 3 of 16 thaws cost a
mate its block stats). Such a domain is asked again at the end of the cycle, after
each wait of ASK_AGAIN_AFTER in turn while its answer still lacks that part and the
tick has time left (TICK_SHARE), and only the fullest answer is sent: one sample per
tick, never two. One wait of 50 ms was enough on a quiet host; with the host's two
cores busy, another client's call held a mate's job past it (1 thaw in 12).
"""

from __future__ import annotations

from dataclasses import dataclass

from vpartcollect.worker.inventory import Domain
from vpartcollect.worker.libvirt_stats import Answer, monitor_skipped

# Seconds after the answer before: an ask that does not block costs libvirtd ~1 ms.
ASK_AGAIN_AFTER = (0.05, 0.1, 0.2, 0.4)
# No further ask starts later than this share of the interval after the cycle started:
# the next tick's cycle is not delayed (an ask does not block: ~1 ms, a few tens on a busy
# host). Half an interval was too little at 1 s with the host's cores busy: a cycle whose
# first answers came 0.35 s in had room for one ask only, and a mate's job was still held.
TICK_SHARE = 0.75


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


def again(first: Held, second: Answer | None, second_stuck: bool) -> bool:
    """Whether to ask once more after ``second``: it came, it lacks the monitor's part
    too, and libvirt does not report the monitor stuck (then it is no passing collision)."""
    return second is not None and not second_stuck and monitor_skipped(second.stats)


def better(first: Held, second: Answer | None, second_stuck: bool) -> tuple[Answer, bool]:
    """The answer to send, and its unresponsive flag: the second if it is fuller."""
    if second is not None and not monitor_skipped(second.stats):
        return second, second_stuck
    return first.answer, first.unresponsive
