"""One instance's life, in a forked child: connect, wait for ticks, sample, send.

A worker is thin on purpose: it talks to libvirt and sends raw results; the
supervisor owns naming, rates and outputs, so nothing is lost when it kills a
worker stuck in a call. Before every call that may block, the worker announces
it (Busy) so the supervisor can hold it to a deadline.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import time
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

import libvirt

from vpartcollect import wire
from vpartcollect.config import Config
from vpartcollect.daemon import OneLineFormatter
from vpartcollect.inventory import Domain, Inventory
from vpartcollect.libvirt_stats import (
    StatsReader,
    monitor_answered,
    open_readonly,
    probe_bulk_groups,
    quiet_libvirt,
)
from vpartcollect.partition import assign, instance_name

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
RECONNECT_MIN = 0.5
RECONNECT_MAX = 10.0  # libvirtd back from a restart is found within seconds


def chunks(items: Sequence[Domain], size: int) -> Iterator[Sequence[Domain]]:
    """Consecutive slices of at most ``size`` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def clean_stats(raw: dict[str, Any]) -> wire.Stats:
    """Keep only wire-safe values: bools become 0/1, other types are dropped."""
    out: wire.Stats = {}
    for key, value in raw.items():
        if isinstance(value, bool):
            out[key] = int(value)
        elif isinstance(value, int | float | str):
            out[key] = value
    return out


class LostConnection(Exception):
    """libvirtd went away under the worker."""


class Worker:
    """The child side of one ``virt-N`` instance."""

    def __init__(self, index: int, cfg: Config, ctl_fd: int, out_fd: int) -> None:
        self.index = index
        self.cfg = cfg
        self.ctl_fd = ctl_fd
        self.out_fd = out_fd
        self.decoder = wire.FrameDecoder()
        self.conn: Any = None
        self.inventory: Inventory | None = None
        self.reader: StatsReader | None = None

    # -- plumbing -------------------------------------------------------
    def send(self, msg: wire.Message) -> None:
        """Write one frame to the supervisor (blocking: it always reads)."""
        data = memoryview(wire.encode(msg))
        while data:
            data = data[os.write(self.out_fd, data) :]

    def next_tick(self) -> wire.Tick | None:
        """Block until the supervisor sends a tick; None when it closed the pipe."""
        while True:
            for msg in self.decoder.feed(b""):
                if isinstance(msg, wire.Tick):
                    return msg
            data = os.read(self.ctl_fd, 65536)
            if not data:
                return None
            for msg in self.decoder.feed(data):
                if isinstance(msg, wire.Tick):
                    return msg

    # -- libvirt --------------------------------------------------------
    def connect(self) -> None:
        """Open a read-only connection, retrying with capped backoff; announce each try."""
        delay = RECONNECT_MIN
        last_error = ""
        while True:
            self.send(wire.Busy("connect", []))
            try:
                conn = open_readonly(self.cfg.connect)
                bulk, fallback = probe_bulk_groups(conn)
                break
            except libvirt.libvirtError as exc:
                message = str(exc.get_error_message() or exc)
                if message != last_error:
                    log.warning("cannot connect to %s: %s (retrying every %.0f s at most)",
                                self.cfg.connect, message, RECONNECT_MAX)
                    last_error = message
                self.send(wire.Idle("connect failed"))
                time.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX)
        if last_error:
            log.warning("connected to %s again", self.cfg.connect)
        self.conn = conn
        self.reader = StatsReader(conn, bulk, fallback)
        label = None
        if "metadata" in self.cfg.hostname_format:
            label = (self.cfg.hostname_metadata_ns, self.cfg.hostname_metadata_path)
        self.inventory = Inventory(conn, self.cfg.refresh_interval, self.reader.needs_devices,
                                   label, adopter=self.index == 0)
        ncpus = int(conn.getInfo()[2])
        self.send(wire.Hello(self.index, os.getpid(), ncpus, conn.getType(), bulk, fallback))

    def _alive(self) -> bool:
        try:
            return bool(self.conn.isAlive())
        except libvirt.libvirtError:
            return False

    # -- one tick -------------------------------------------------------
    def mine(self, skip: set[str]) -> list[Domain]:
        """This instance's domains (partition rule and include/exclude), minus ``skip``."""
        assert self.inventory is not None
        self.send(wire.Busy("list", []))
        return [d for d in self.inventory.running()
                if assign(d.tag, self.cfg.instances).instance == self.index
                and d.uuid not in skip and self.cfg.wants(d.name)]

    def sample(self, tick: wire.Tick) -> None:
        """Collect and send every chunk of this tick, then Done."""
        assert self.reader is not None
        started = time.monotonic()
        domains = self.mine(set(tick.skip))
        suspects = set(tick.suspects)
        for chunk in chunks(domains, self.cfg.chunk_size):
            self.send(wire.Busy("stats", [d.uuid for d in chunk]))
            sampled = time.time()
            raw = self.reader.collect(chunk)
            # Ask libvirt about the monitor only where the answer looks partial: one
            # RPC per hung domain instead of one per domain per cycle.
            stuck = {d.uuid for d in chunk
                     if (d.uuid in suspects or not monitor_answered(raw.get(d.uuid, {})))
                     and Inventory.unresponsive(d, suspect=d.uuid in suspects)}
            samples = [wire.DomainSample(d.uuid, d.name, d.tag, d.uuid in stuck,
                                         clean_stats(raw[d.uuid]), d.label)
                       for d in chunk if d.uuid in raw]
            self.send(wire.Results(tick.ts, sampled, samples))
        self.send(wire.Done(tick.ts, time.monotonic() - started, len(domains)))

    def run(self) -> int:
        """Serve ticks until the supervisor closes the control pipe."""
        self.connect()
        while (tick := self.next_tick()) is not None:
            while True:
                try:
                    self.sample(tick)
                    break
                except libvirt.libvirtError as exc:
                    if self._alive():
                        log.warning("tick %s failed: %s", tick.ts, exc.get_error_message())
                        self.send(wire.Done(tick.ts, 0.0, 0))
                        break
                    log.warning("lost the connection to %s: %s", self.cfg.connect,
                                exc.get_error_message())
                    self.connect()
        return 0


def _die_with_parent() -> None:
    # If the supervisor is SIGKILLed, no worker may outlive it holding libvirt calls.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def worker_main(index: int, cfg: Config, ctl_fd: int, out_fd: int, parent_pid: int) -> NoReturn:
    """Entry point after fork: never returns, always ends the process."""
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when we stop
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        _die_with_parent()
        if os.getppid() != parent_pid:
            os._exit(1)
        name = instance_name(index)
        for handler in logging.getLogger().handlers:
            handler.setFormatter(OneLineFormatter(
                f"vpartcollect[%(process)d] {name}: %(levelname)s: %(message)s"))
        quiet_libvirt()
        code = Worker(index, cfg, ctl_fd, out_fd).run()
    except (BrokenPipeError, KeyboardInterrupt):
        code = 0
    except wire.WireError as exc:
        log.error("bad control frame from the supervisor: %s", exc)
    except Exception:
        log.exception("worker crashed")
    finally:
        os._exit(code)
