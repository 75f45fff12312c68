"""What an exporter started again needs to show at once what the one before it showed.

The exporter's board lives in its own process. One started again (it crashed, was
killed, or a SIGHUP changed its settings) began empty, and a scrape before the
next tick then found no domain at all: Prometheus marked every series stale, a
gap in every graph. The supervisor keeps, per instance, the frames of its last
finished tick and of the tick it is in, and the last collector frame, and gives
them to the new exporter first. Pure bookkeeping of the frames' bodies.
"""

from __future__ import annotations

from typing import Any

Body = list[Any]  # a frame before packing: [kind, ...] (channel.py)


class Recap:
    """The frames that rebuild the board: each instance's last finished tick (its
    samples, then its "done") and what came since, and the last collector frame."""

    def __init__(self) -> None:
        self.finished: dict[int, list[Body]] = {}
        self.done_at: dict[int, float] = {}  # when the supervisor passed that "done" on
        self.since: dict[int, tuple[float, list[Body]]] = {}  # the tick, its frames
        self.collector: Body | None = None

    def note(self, body: Body, tick: float, now: float) -> None:
        """A frame of ``tick`` passed on to the exporter at ``now`` (the supervisor's
        clock). An instance's ticks come one after another: results of a later tick
        than those held end a tick that never finished (its worker was killed)."""
        kind = body[0]
        if kind == "results":
            instance = int(body[1])
            held = self.since.get(instance)
            if held is None or held[0] != tick:
                held = self.since[instance] = (tick, [])
            held[1].append(body)
        elif kind == "done":
            instance = int(body[1])
            held = self.since.pop(instance, None)
            self.finished[instance] = [*(held[1] if held and held[0] == tick else []), body]
            self.done_at[instance] = now
        elif kind == "collector":
            self.collector = body

    def frames(self, instances: int, now: float) -> list[Body]:
        """The frames for a new exporter, then forget the instances at ``instances`` and
        above (a reload that runs fewer).

        Each "done" carries how long ago it was passed on (its sixth field), so that the
        new board's ``libvirt_up`` ages it from then, not from the replay. The samples
        of an instance that is no more are given to virt-0: they stay until virt-0
        finishes a later tick, by when their new owners have sampled them (a domain
        that went with its instance is then dropped, as a gone domain is)."""
        out: list[Body] = []
        for instance in sorted(self.finished.keys() | self.since.keys()):
            since = self.since.get(instance, (0.0, []))[1]
            for body in [*self.finished.get(instance, []), *since]:
                if instance >= instances:
                    if body[0] == "results":
                        out.append(["results", 0, *body[2:]])
                elif body[0] == "done":
                    out.append([*body[:5], max(0.0, now - self.done_at[instance])])
                else:
                    out.append(body)
        if self.collector is not None:
            out.append(self.collector)
        for table in (self.finished, self.done_at, self.since):
            for instance in [i for i in table if i >= instances]:
                del table[instance]
        return out
