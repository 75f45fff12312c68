"""The Prometheus sink: a listening socket the supervisor bound, and a socket pair to the
exporter process (server.py) that serves it.

A sink that takes no metrics, only each domain's raw sample and each tick's own
values (the Sink seam's ``samples``, ``tick_done``, ``tick_started``). The
supervisor only packs frames (each instance's samples in the workers' codec,
each finished tick's own values) and writes them non-blocking; what the
exporter has not taken waits in a bounded outbox (oldest dropped, counted). An
exporter that dies is started again with backoff on the same listening socket,
and given the frames that rebuild the board it had (recap.py) before any new one.
A reload that changes the exporter's settings starts a new exporter beside the old
one, which finishes the scrapes it is answering before it exits (a drain).
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import socket
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence

import msgpack

from vpartcollect import children, wire
from vpartcollect.backoff import backoff
from vpartcollect.config import Config, ConfigError, Endpoint
from vpartcollect.daemon import fork_child
from vpartcollect.health import HealthValue
from vpartcollect.output.prometheus.recap import Body, Recap
from vpartcollect.output.prometheus.server import DRAIN_SECONDS, ExporterSettings, exporter_main
from vpartcollect.output.prometheus.webconfig import WebConfigError
from vpartcollect.output.prometheus.webconfig import load as load_web_config
from vpartcollect.output.sinks.base import SinkBase
from vpartcollect.samples import DomainSample

log = logging.getLogger(__name__)

OUTBOX_BYTES = 64 << 20  # a few ticks of a large host
RESPAWN_MIN, RESPAWN_MAX = 0.5, 30.0
LIVED = 60.0  # an exporter that ran this long before dying starts again after RESPAWN_MIN
DRAIN_KILL = DRAIN_SECONDS + 5.0  # an old exporter still there this long after: SIGKILL


def listen(endpoint: Endpoint) -> socket.socket:
    """Bind and listen where the configuration says, or ConfigError (exit 2 at start)."""
    try:
        infos = socket.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        family, kind, proto, _, addr = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigError(f"prometheus: cannot listen on {endpoint}: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"prometheus: cannot listen on {endpoint}: "
                          f"{exc.strerror or exc}") from None
    return sock


# Sockets bound by ``prebind`` for a reload that moves the endpoint, taken by the sink made.
_prebound: dict[Endpoint, socket.socket] = {}


def prebind(old: Config, new: Config) -> None:
    """SIGHUP: bind the new endpoint now, before anything is applied, so that a taken
    port is a ConfigError the reload reports (keeping the running configuration)."""
    for endpoint in list(_prebound):
        if endpoint != new.prometheus:
            _prebound.pop(endpoint).close()
    if new.prometheus is not None and new.prometheus != old.prometheus \
            and new.prometheus not in _prebound:
        _prebound[new.prometheus] = listen(new.prometheus)


def exporter_settings(cfg: Config) -> ExporterSettings:
    """What the exporter process is started with (the web configuration as read now: a
    bad one is a ConfigError, exit 2 at start; on SIGHUP the running one is kept)."""
    try:
        first = load_web_config(cfg.web_config) if cfg.web_config else None
    except WebConfigError as exc:
        raise ConfigError(str(exc)) from None
    return ExporterSettings(cfg.interval, cfg.prometheus_timestamps, cfg.instances,
                            2 * cfg.interval + cfg.call_timeout + 5, cfg.web_config, first)


class PrometheusSink(SinkBase):
    """The listening socket, the exporter process and the frames on their way to it."""

    writes = False  # no finished metrics: raw samples and own values only

    def __init__(self, endpoint: Endpoint, settings: ExporterSettings,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.endpoint = endpoint
        self.settings = settings
        prebound = _prebound.pop(endpoint, None)
        self.listening = prebound if prebound is not None else listen(endpoint)
        self.clock = clock
        self.sock: socket.socket | None = None
        self.pid = 0
        self.outbox: deque[bytes] = deque()
        self.outbox_bytes = 0
        self.head_sent = 0
        self.dropped = 0  # frames dropped (outbox full)
        self.failures = 0
        self.start_at = 0.0
        self.started = 0.0  # when the running exporter was started (clock)
        self.recap = Recap()
        self.protected = 0  # frames at the outbox's head no trim may drop: a recap, "ready"
        self.draining: dict[int, float] = {}  # old exporters' pids -> when to kill them

    def __str__(self) -> str:
        return f"prometheus {self.endpoint}"

    # -- what the publisher hands over ------------------------------------------
    def samples(self, instance: int, tick: float, samples: Sequence[DomainSample]) -> None:
        """An instance's samples (the exporter decodes them with the workers' codec).
        A worker a reload made one too many finishes its tick: its samples go to virt-0
        as a recap's do (recap.py), its instance no more on the board."""
        if instance >= self.settings.instances:
            instance = 0
        self._queue(["results", instance, wire.encode(wire.Results(tick, list(samples)))],
                    tick)

    def tick_done(self, instance: int, tick: float, values: Mapping[str, float],
                  health: Sequence[HealthValue] = ()) -> None:
        """An instance finished ``tick`` with these own values and host health (not
        passed on for an instance a reload removed: see ``samples``)."""
        if instance >= self.settings.instances:
            return
        self._queue(["done", instance, tick, dict(values), [list(h) for h in health]], tick)

    def tick_started(self, tick: float, values: Mapping[str, float]) -> None:
        """The collector-wide values of a tick that begins."""
        self._queue(["collector", dict(values), tick], tick)

    def self_metrics(self) -> dict[str, float]:
        """Frames the exporter could not take in time (its outbox full), dropped."""
        return {"prometheus_dropped_frames": self.dropped}

    def reconfigure(self, old: Config, new: Config) -> bool:
        """Kept on the same endpoint: the listening socket stays; when the exporter's
        settings changed a new exporter starts, and the old one drains. (Another
        endpoint: a new sink, on the socket ``prebind`` bound while the reload could
        still be refused.)"""
        if new.prometheus != self.endpoint:
            return False
        settings = exporter_settings(new)
        if settings != self.settings:
            self.settings = settings
            self._stop(drain=True)
            self.head_sent = 0
            self.outbox.clear()  # frames for the old settings (instances...)
            self.protected = 0
            self.outbox_bytes = 0
            self.failures, self.start_at = 0, 0.0  # started again by the next poll()
        return True

    # -- the supervisor's loop ----------------------------------------------------
    def interest(self) -> tuple[socket.socket, int] | None:
        """The socket and events to wait for (its end closing; room for the outbox)."""
        if self.sock is None:
            return None
        return self.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if self.outbox else 0)

    def next_wakeup(self) -> float | None:
        """When the exporter is due to be started again, or an old one to be killed."""
        due = [*self.draining.values(), *([self.start_at] if self.sock is None else [])]
        return min(due) if due else None

    def poll(self) -> None:
        """Start the exporter when it is not running and its backoff has passed; kill an
        old exporter whose drain took too long."""
        now = self.clock()
        for pid, deadline in list(self.draining.items()):
            if now >= deadline:
                del self.draining[pid]
                self._signal(pid, signal.SIGKILL)
        if self.sock is None and now >= self.start_at:
            self._start()

    def on_ready(self, mask: int) -> None:
        """The exporter's end closed (it died), or its socket takes more."""
        if self.sock is None:
            return
        if mask & selectors.EVENT_READ:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                data = b"-"
            except OSError:
                data = b""
            if not data:
                self._died("exited")
                return
        if mask & selectors.EVENT_WRITE:
            self._send()

    def close(self) -> None:
        """Stop the exporter (and any old one draining) and stop listening."""
        self._stop()
        for pid in self.draining:
            self._signal(pid, signal.SIGTERM)
        self.draining.clear()
        self.listening.close()

    def _stop(self, drain: bool = False) -> None:
        """``drain``: close only its end of the socket pair: the exporter stops accepting,
        finishes the requests it is answering and exits (server.py ``drain``)."""
        self.on_close()
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if drain and self.pid and children.running(self.pid):
            self.draining[self.pid] = self.clock() + DRAIN_KILL
        elif self.pid:
            self._signal(self.pid, signal.SIGTERM)
        self.pid = 0

    @staticmethod
    def _signal(pid: int, sig: int) -> None:
        if children.running(pid):  # once reaped, the pid may be someone else's
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    # -- internals ------------------------------------------------------------------
    def _queue(self, body: Body, tick: float) -> None:
        self.recap.note(body, tick, self.clock())
        frame: bytes = msgpack.packb(body, use_bin_type=True)
        self.outbox.append(frame)
        self.outbox_bytes += len(frame)
        # A half-written head stays, and so do a recap and its "ready" (a board rebuilt
        # in part would be served): the oldest frame after them goes.
        at = max(1 if self.head_sent else 0, self.protected)
        while self.outbox_bytes > OUTBOX_BYTES and len(self.outbox) > at + 1:
            old = self.outbox[at]
            del self.outbox[at]
            self.outbox_bytes -= len(old)
            self.dropped += 1
        if self.sock is not None:
            self._send()

    def _send(self) -> None:
        assert self.sock is not None
        while self.outbox:
            head = self.outbox[0]
            try:
                sent = self.sock.send(memoryview(head)[self.head_sent:])
            except BlockingIOError:
                return
            except OSError:
                self._died("went away")
                return
            self.head_sent += sent
            if self.head_sent < len(head):
                return
            self.outbox.popleft()
            self.outbox_bytes -= len(head)
            self.head_sent = 0
            self.protected = max(0, self.protected - 1)

    def _start(self) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for sock in (mine, theirs):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        listening, parent = self.listening, os.getpid()
        try:
            self.pid = fork_child({theirs.fileno(), listening.fileno()},
                                  lambda: exporter_main(listening, theirs, self.settings,
                                                        parent),
                                  "prometheus", str(self.endpoint))
        except OSError as exc:
            mine.close()
            theirs.close()
            self._died(f"cannot start it: {exc.strerror or exc}")
            return
        pid = self.pid
        children.register(pid, lambda _status: self._reaped(pid))
        theirs.close()
        mine.setblocking(False)
        self.sock, self.head_sent, self.started = mine, 0, self.clock()
        # What waited was meant for the old exporter's board: the new one is given the
        # frames that rebuild it (the last tick of each instance), then "ready" (it
        # answers no scrape before), then the next ones.
        frames = [msgpack.packb(body, use_bin_type=True)
                  for body in [*self.recap.frames(self.settings.instances, self.clock()),
                               ["ready"]]]
        self.outbox = deque(frames)
        self.outbox_bytes = sum(map(len, frames))
        self.protected = len(frames)
        self._send()

    def _reaped(self, pid: int) -> None:
        self.draining.pop(pid, None)
        if pid == self.pid:
            self.pid = 0

    def _died(self, why: str) -> None:
        self._stop()
        self.head_sent = 0
        self.outbox.clear()
        self.protected = 0
        self.outbox_bytes = 0
        if self.clock() - self.started >= LIVED:  # not a crash loop: backoff from the start
            self.failures = 0
        delay = backoff(self.failures, RESPAWN_MIN, RESPAWN_MAX)
        self.start_at = self.clock() + delay
        self.failures += 1
        log.warning("%s: exporter %s; starting it again in %.1f s", self, why, delay)
