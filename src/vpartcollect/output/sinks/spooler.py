"""A Graphite destination with a spool: its own process, live lines first, the backlog on disk.

The supervisor hands every line for the destination to this process over a
socket pair (spool_channel.py) and never waits on it, nor on the disk. Here:

- lines go straight to carbon while it is connected and keeping up;
- lines that cannot be sent at once (carbon down, or more than LIVE_WATERMARK
  waiting) go to the spool on disk, in batches, within FLUSH_SECONDS;
- when the connection dies, what it would send again (its resend window and
  its queue) goes to the spool too, so memory stays flat through any outage;
- while carbon answers, the spool drains over a second connection at
  ``drain_rate`` lines a second, beside the live lines, never ahead of them
  (carbon takes timestamps out of order);
- if the disk refuses a write (full), lines wait in memory up to the
  destination's ``graphite_buffer``, oldest dropped first, and the disk is tried
  again every DISK_RETRY_SECONDS;
- every second a stats frame goes back; on "stop", on SIGTERM, or when the
  supervisor goes away, what is in memory goes to the spool and is synced.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

import msgpack

from vpartcollect import children
from vpartcollect.config import Endpoint
from vpartcollect.daemon import OneLineFormatter, die_with_parent
from vpartcollect.output.sinks.base import Registrations
from vpartcollect.output.sinks.graphite import GraphiteSink
from vpartcollect.output.sinks.spool import SEGMENT_BYTES, Spool

log = logging.getLogger(__name__)

LIVE_WATERMARK = 20_000  # live lines waiting beyond this go to the spool instead
DRAIN_QUEUE = 20_000  # spooled lines handed to the drain connection ahead, at most
RECORD_LINES = 10_000  # lines per batch on disk, at most
FLUSH_SECONDS = 0.2  # lines for the spool wait no longer than this in memory
DISK_RETRY_SECONDS = 5.0
STATS_SECONDS = 1.0
LOOK_SECONDS = 0.2  # the loop looks at least this often (a SIGTERM is seen within it)
MAX_FRAME = 64 * 1024 * 1024


@dataclass(frozen=True)
class SpoolSettings:
    """What a spooler needs to know (all of it from the configuration)."""

    directory: Path
    max_bytes: int
    drain_rate: float  # lines a second
    max_lines: int  # memory bound (graphite_buffer)
    resend_seconds: float
    flush_timeout: float


def stats_frame(values: dict[str, float]) -> bytes:
    """The frame a spooler reports with."""
    packed: bytes = msgpack.packb(["stats", values], use_bin_type=True)
    return packed


class Spooler:
    """The loop of one destination's spooler process."""

    def __init__(self, endpoint: Endpoint, settings: SpoolSettings,
                 channel: socket.socket) -> None:
        self.settings = settings
        self.channel = channel
        channel.setblocking(False)
        self.unpacker = msgpack.Unpacker(raw=False, max_buffer_size=MAX_FRAME)
        self.spool = Spool(settings.directory, settings.max_bytes, settings.resend_seconds,
                           max(64 * 1024, min(SEGMENT_BYTES, settings.max_bytes // 16)))
        self.live = GraphiteSink(endpoint, settings.max_lines, settings.resend_seconds)
        self.watermark = min(LIVE_WATERMARK, settings.max_lines)
        # Never trimmed: what it holds is fed from the spool, DRAIN_QUEUE lines at most.
        self.drain = GraphiteSink(endpoint, 1 << 62, resend_seconds=0)
        self.pending: deque[bytes] = deque()  # lines on their way to the spool
        self.pending_oldest = float("inf")
        self.flushed_at = time.monotonic()
        self.disk_retry_at = 0.0
        self.disk_error = ""
        self.memory_dropped = 0
        self.tokens = 0.0
        self.refilled = time.monotonic()
        self.drained = 0
        self.drained_before, self.reported_at = 0, time.monotonic()
        self.drain_was_up = False
        self.stopping = False
        self.selector = selectors.DefaultSelector()
        self.selector.register(channel, selectors.EVENT_READ, None)
        self._registered = Registrations()
        # The selector lets go of a sink's socket before the sink closes it: the other
        # sink's next socket may get that fd number, and register() would refuse it.
        self.live.on_close = lambda: self._registered.drop(self.selector, self.live)
        self.drain.on_close = lambda: self._registered.drop(self.selector, self.drain)

    def __repr__(self) -> str:
        return (f"<Spooler {self.live.endpoint} live={self.live.conn!r} "
                f"pending={len(self.pending)} {self.spool!r}>")

    # -- the loop -------------------------------------------------------------
    def run(self) -> None:
        """Serve until stopped, then keep what is left in the spool."""
        while not self.stopping:
            self._register()
            for key, mask in self.selector.select(self._timeout()):
                if key.data is None:
                    self._read_channel()
                else:
                    key.data.on_ready(mask)
            self._after()
        self._finish()

    def _timeout(self) -> float:
        now = time.monotonic()
        waits = [STATS_SECONDS - (now - self.reported_at), LOOK_SECONDS]
        if self.pending:
            waits.append(FLUSH_SECONDS - (now - self.flushed_at))
        waits += [w - now for s in (self.live, self.drain)
                  if (w := s.next_wakeup()) is not None]
        if self._backlog():
            waits.append(0.05)  # drain pacing
        return max(0.0, min(waits))

    def _register(self) -> None:
        for sink in (self.live, self.drain):
            if sink is self.drain and not self._backlog() and not sink.buffered:
                want = None
                if sink.conn.up:
                    sink.close()  # nothing to drain: no idle second connection
                    self.drain_was_up = False  # closed on purpose: nothing to send again
            else:
                sink.poll()
                want = sink.interest()
            self._registered.update(self.selector, sink, want, sink)

    def _read_channel(self) -> bool:
        """Take what the supervisor sent; False when there is nothing more to read now."""
        try:
            data = self.channel.recv(1 << 20)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:
            self.stopping = True  # the supervisor went away
            return False
        try:
            self.unpacker.feed(data)
            for frame in self.unpacker:
                self._frame(frame)
        except (ValueError, msgpack.UnpackException) as exc:
            log.error("spooler for %s: bad frame from the supervisor (%s); stopping",
                      self.live.endpoint, exc)
            self.stopping = True
            return False
        return True

    def _frame(self, frame: Any) -> None:
        if frame == ["stop"]:
            self.stopping = True
        elif (isinstance(frame, list) and len(frame) == 3 and frame[0] == "settings"
              and type(frame[1]) is int and frame[1] > 0
              and type(frame[2]) in (int, float) and frame[2] >= 0):
            # A reload's new bounds: the connection and what it holds stay.
            self.settings = replace(self.settings, max_lines=frame[1],
                                    resend_seconds=float(frame[2]))
            self.live.set_bounds(frame[1], float(frame[2]))
            # As at start: the live queue's watermark and the spool's resend window too.
            self.watermark = min(LIVE_WATERMARK, frame[1])
            self.spool.keep_seconds = float(frame[2])
        elif (isinstance(frame, list) and len(frame) == 4 and frame[0] == "lines"
              and isinstance(frame[1], bytes)):
            lines = frame[1].splitlines(keepends=True)
            # What fits under the watermark goes live, the rest to the spool: the live
            # queue's own bound (graphite_buffer, maybe lower) must never drop a line.
            room = self.watermark - self.live.buffered if self.live.conn.up else 0
            if room > 0:
                self.live.write_lines(lines[:room])
            if len(lines) > max(room, 0):
                self._to_spool(lines[max(room, 0):], float(frame[3]))

    # -- after each pass ----------------------------------------------------------
    def _after(self) -> None:
        if not self.live.conn.up and (self.live.queue or self.live.recent):
            self._to_spool(self.live.take_unsent(), float("-inf"))
        children.reap()  # our name lookups
        excess = self.live.buffered - self.watermark
        if self.live.conn.up and excess > 0:  # carbon reads slowly: the rest waits on disk
            self._to_spool([self.live.queue.popleft() for _ in range(excess)], float("-inf"))
        if self.drain_was_up and not self.drain.conn.up:
            self.drain.take_unsent()  # still in the spool: handed on again from there
            self.spool.rewind(time.monotonic())
        self.drain_was_up = self.drain.conn.up
        now = time.monotonic()
        if self.pending and self.disk_error and self.live.conn.up:
            # The disk refuses, carbon answers: what waits in memory goes out directly.
            self.drain.write_lines(self.pending)
            self.pending.clear()
        if self.pending and (now - self.flushed_at >= FLUSH_SECONDS or self.stopping):
            self._flush_pending(now)
        self._feed_drain(now)
        if now - self.reported_at >= STATS_SECONDS:
            self._report(now)

    def _to_spool(self, lines: list[bytes], oldest: float) -> None:
        if lines:
            self.pending.extend(lines)
            self.pending_oldest = min(self.pending_oldest, oldest if oldest > 0 else
                                      _timestamp(lines[0]))
        over = len(self.pending) - self.settings.max_lines
        if over > 0 and self.disk_error:  # the disk refuses: the memory bound holds
            for _ in range(over):
                self.pending.popleft()
            self.memory_dropped += over

    def _flush_pending(self, now: float) -> None:
        if self.disk_error and now < self.disk_retry_at and not self.stopping:
            return
        lines = list(self.pending)
        try:
            for start in range(0, len(lines), RECORD_LINES):
                batch = lines[start:start + RECORD_LINES]
                self.spool.append(b"".join(batch), len(batch), self.pending_oldest)
                for _ in batch:
                    self.pending.popleft()
        except OSError as exc:
            if not self.disk_error:
                log.warning("spool %s: cannot write (%s); keeping up to %d lines in memory "
                            "and trying again every %.0f s", self.spool.dir,
                            exc.strerror or exc, self.settings.max_lines, DISK_RETRY_SECONDS)
            self.disk_error = str(exc)
            self.disk_retry_at = now + DISK_RETRY_SECONDS
            self._to_spool([], 0.0)  # the memory bound holds from now on
            return
        if self.disk_error:
            log.info("spool %s: writing again", self.spool.dir)
            self.disk_error = ""
        self.pending.clear()
        self.pending_oldest = float("inf")
        self.flushed_at = now

    def _feed_drain(self, now: float) -> None:
        """Hand spooled batches to the drain connection, at drain_rate, while carbon is up."""
        rate = self.settings.drain_rate
        self.tokens = min(rate, self.tokens + rate * (now - self.refilled))
        self.refilled = now
        queued = self.drain.buffered
        while self.drain.conn.up and self.tokens > 0 and queued < DRAIN_QUEUE:
            record = self.spool.next_batch()
            if record is None:
                break
            self.drain.write_lines(record.payload.splitlines(keepends=True))
            self.spool.handed(record)
            self.tokens -= record.lines
            queued += record.lines
            self.drained += record.lines

    def _backlog(self) -> bool:
        return self.spool.stats().lines > 0

    def _report(self, now: float) -> None:
        self.spool.release()  # what was drained long enough ago leaves the disk
        stats = self.spool.stats()
        values = {
            "spooled": stats.lines + len(self.pending), "bytes": stats.bytes,
            "oldest": stats.oldest or 0.0,
            "drained": (self.drained - self.drained_before) / max(now - self.reported_at, 1e-3),
            "dropped": stats.dropped + self.memory_dropped + self.live.dropped,
            "corrupt": stats.corrupt_bytes, "buffered": self.live.buffered + len(self.pending),
        }
        self.drained_before, self.reported_at = self.drained, now
        try:
            self.channel.send(stats_frame(values))
        except (BlockingIOError, OSError):
            pass  # the supervisor is busy or gone: the next report says it all

    # -- stopping -------------------------------------------------------------
    def _finish(self) -> None:
        """Send what carbon can take within the flush timeout; keep the rest on disk."""
        deadline = time.monotonic() + self.settings.flush_timeout / 2
        while time.monotonic() < deadline and self._read_channel():
            pass  # what the supervisor sent before it stopped (or died) is kept too
        while self.live.conn.up and self.live.buffered and time.monotonic() < deadline:
            self.live.on_ready(selectors.EVENT_WRITE)
            time.sleep(0.01)
        if not self.live.finish(deadline):
            self._to_spool(self.live.take_unsent(), float("-inf"))
        self._to_spool(self.drain.take_unsent(), float("-inf"))
        if self.pending:
            self._flush_pending(time.monotonic())
        try:
            self.spool.sync()
        except OSError:
            pass
        self.spool.close()
        self.live.close()
        self.drain.close()


def _timestamp(line: bytes) -> float:
    try:
        return float(line.rsplit(b" ", 1)[1])
    except (IndexError, ValueError):
        return time.time()


def spooler_main(endpoint: Endpoint, settings: SpoolSettings, channel: socket.socket,
                 parent_pid: int) -> NoReturn:
    """Entry point after fork: never returns, always ends the process."""
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        # The supervisor gone (even by SIGKILL): a SIGTERM, to keep what is in memory.
        die_with_parent(signal.SIGTERM)
        if os.getppid() != parent_pid:
            os._exit(1)
        for handler in logging.getLogger().handlers:
            handler.setFormatter(OneLineFormatter(
                f"vpartcollect[%(process)d] spool {endpoint}: %(levelname)s: %(message)s"))
        spooler = Spooler(endpoint, settings, channel)

        def stop(_signum: int, _frame: object) -> None:
            spooler.stopping = True

        signal.signal(signal.SIGTERM, stop)
        spooler.run()
        code = 0
    except OSError as exc:  # the spool directory went away, or was never writable
        log.error("spooler for %s: %s; restarting", endpoint, exc)
    except Exception:
        log.exception("spooler for %s crashed", endpoint)
    finally:
        os._exit(code)
