"""A bounded queue of Graphite lines on disk, for one destination (in its spooler process).

Batches are appended to the newest segment (segments.py) and read back oldest
first to be drained. A batch handed on is not forgotten at once: its segment is
removed only once everything in it was handed on more than ``keep_seconds``
ago, so a connection that dies (or a collector killed) while carbon had not read
the last lines gets them again (carbon keeps one value per path and timestamp:
harmless). Beyond ``max_bytes`` the oldest segments go first, their lines
counted as dropped. Segments left by an earlier run are read at start: torn or
corrupt parts are skipped and counted, never fatal.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vpartcollect.sinks import segments
from vpartcollect.sinks.segments import Record, Skipped

log = logging.getLogger(__name__)

SEGMENT_BYTES = 4 * 1024 * 1024  # a new segment past this size


@dataclass
class Segment:
    """One segment file and what is known of it."""

    path: Path
    size: int = 0
    lines: int = 0  # lines not handed on yet
    oldest: float = math.inf  # the oldest timestamp it ever held


@dataclass(frozen=True)
class SpoolStats:
    """What the spool holds (the collector's own metrics)."""

    lines: int
    bytes: int
    oldest: float | None
    dropped: int
    corrupt_bytes: int


@dataclass(frozen=True)
class _Handed:
    when: float  # monotonic
    path: Path
    start: int
    end: int


class Spool:
    """Append batches; read them back in order; remove what was handed on long enough ago."""

    def __init__(self, directory: Path, max_bytes: int, keep_seconds: float = 30.0,
                 segment_bytes: int = SEGMENT_BYTES) -> None:
        self.dir = directory
        self.max_bytes = max_bytes
        self.keep_seconds = keep_seconds
        self.segment_bytes = segment_bytes
        self.dropped = 0  # lines removed unsent to stay within max_bytes
        self.corrupt_bytes = 0  # bytes of torn or corrupt records skipped
        self._episode_dropped = 0
        self._bad_seen: set[tuple[str, int]] = set()  # (segment, offset) already counted
        directory.mkdir(parents=True, exist_ok=True)
        self._segments: deque[Segment] = deque(self._recover())
        self._writer: int | None = None  # fd of the newest segment, opened for appending
        self._cursor = (0, 0)  # (index into _segments, offset) of the next record
        self._handed: deque[_Handed] = deque()
        self._data: tuple[Path, bytes] | None = None  # the segment being read, in memory

    def __repr__(self) -> str:
        return f"<Spool {self.dir} {len(self._segments)} segment(s), {self.stats().lines} lines>"

    # -- writing --------------------------------------------------------------
    def append(self, payload: bytes, lines: int, oldest: float) -> None:
        """Append one batch of whole lines (OSError when the disk refuses it)."""
        record = segments.encode(payload, lines, oldest)
        if self._writer is None or self._segments[-1].size >= self.segment_bytes:
            self._open_next()
        assert self._writer is not None
        seg = self._segments[-1]
        written = os.write(self._writer, record)
        seg.size += written
        if written != len(record):  # the disk filled up mid-record: what went is torn
            raise OSError(28, "No space left on device (short write)")
        seg.lines += lines
        seg.oldest = min(seg.oldest, oldest)
        self._bound()

    def sync(self) -> None:
        """Flush the newest segment to the disk (at a stop)."""
        if self._writer is not None:
            os.fsync(self._writer)

    def close(self) -> None:
        """Close the writer (the files stay for the next run)."""
        if self._writer is not None:
            os.close(self._writer)
            self._writer = None

    # -- reading ----------------------------------------------------------------
    def next_batch(self) -> Record | None:
        """The oldest batch not handed on yet, or None; call ``handed`` once it is."""
        index, offset = self._cursor
        while index < len(self._segments):
            seg = self._segments[index]
            for item in self._records(seg, offset):
                if isinstance(item, Skipped):
                    self._corrupt(seg.path, item)
                    continue
                return item
            if index == len(self._segments) - 1:
                return None  # the newest segment: more may be appended to it
            index, offset = index + 1, 0
            self._cursor = (index, 0)
        return None

    def handed(self, record: Record) -> None:
        """The batch ``next_batch`` returned was handed on to carbon."""
        index, _ = self._cursor
        seg = self._segments[index]
        self._cursor = (index, record.end)
        seg.lines -= record.lines
        self._handed.append(_Handed(time.monotonic(), seg.path, record.start, record.end))
        self.release()

    def rewind(self, lost_at: float) -> None:
        """The connection died at monotonic ``lost_at``: hand on again what was handed on
        in the ``keep_seconds`` before (carbon may not have read it)."""
        horizon = lost_at - self.keep_seconds
        again = next((h for h in self._handed if h.when >= horizon), None)
        if again is None:
            return
        paths = [s.path for s in self._segments]
        first = paths.index(again.path)
        for h in self._handed:
            if h.when >= horizon:
                self._segments[paths.index(h.path)].lines += self._lines(h)
        self._cursor = (first, again.start)
        self._handed = deque(h for h in self._handed if h.when < horizon)

    def release(self) -> None:
        """Remove the segments wholly handed on more than ``keep_seconds`` ago."""
        horizon = time.monotonic() - self.keep_seconds
        while self._handed and self._handed[0].when < horizon:
            self._handed.popleft()
        needed = self._handed[0].path if self._handed else None
        index, offset = self._cursor
        while index > 0 and self._segments[0].path != needed:
            self._remove(self._segments.popleft())
            index -= 1
        self._cursor = (index, offset)

    def stats(self) -> SpoolStats:
        """Lines and bytes waiting, the oldest timestamp among them, drops, corruption."""
        waiting = [s for i, s in enumerate(self._segments) if i >= self._cursor[0]]
        oldest = min((s.oldest for s in waiting if s.lines > 0), default=math.inf)
        return SpoolStats(sum(max(s.lines, 0) for s in waiting),
                          sum(s.size for s in self._segments),
                          None if oldest == math.inf else oldest, self.dropped,
                          self.corrupt_bytes)

    # -- internals --------------------------------------------------------------
    def _recover(self) -> list[Segment]:
        """Segments left by an earlier run (a crash may have torn the newest)."""
        found = []
        for path in segments.segments(self.dir):
            try:
                data = path.read_bytes()
            except OSError as exc:
                log.warning("spool %s: cannot read %s (%s); leaving it", self.dir, path.name,
                            exc.strerror)
                continue
            seg = Segment(path, len(data))
            for item in segments.decode(data):
                if isinstance(item, Skipped):
                    self._corrupt(path, item)
                else:
                    seg.lines += item.lines
                    seg.oldest = min(seg.oldest, item.oldest)
            found.append(seg)
        if found:
            log.info("spool %s: %d line(s) left by an earlier run, to send", self.dir,
                     sum(s.lines for s in found))
        return found

    def _corrupt(self, path: Path, skipped: Skipped) -> None:
        key = (path.name, skipped.start)
        if key not in self._bad_seen:
            self._bad_seen.add(key)
            self.corrupt_bytes += skipped.count
            log.warning("spool %s: %d byte(s) of %s torn or corrupt, skipped", self.dir,
                        skipped.count, path.name)

    def _open_next(self) -> None:
        if self._writer is not None:
            os.close(self._writer)
        number = segments.sequence_of(self._segments[-1].path) + 1 if self._segments else 1
        path = self.dir / segments.segment_name(number)
        self._writer = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                               0o600)
        self._segments.append(Segment(path))

    def _records(self, seg: Segment, offset: int) -> Iterator[Record | Skipped]:
        """The records of a segment from ``offset``: an older segment is read once and
        kept while it is being drained; the newest, which grows, from ``offset`` on."""
        if seg is self._segments[-1]:
            with open(seg.path, "rb") as fh:
                fh.seek(offset)
                return segments.decode(fh.read(), 0, offset)
        if self._data is None or self._data[0] != seg.path:
            self._data = (seg.path, seg.path.read_bytes())
        return segments.decode(self._data[1], offset)

    def _lines(self, handed: _Handed) -> int:
        seg = next(s for s in self._segments if s.path == handed.path)
        return next((r.lines for r in self._records(seg, handed.start)
                     if isinstance(r, Record)), 0)

    def _bound(self) -> None:
        """Drop the oldest segments (never the one being written) beyond max_bytes."""
        total = sum(s.size for s in self._segments)
        while total > self.max_bytes and len(self._segments) > 1:
            seg = self._segments.popleft()
            total -= seg.size
            lost = max(seg.lines, 0)
            self.dropped += lost
            if not self._episode_dropped:
                log.warning("spool %s: full (%d bytes); dropping the oldest lines", self.dir,
                            self.max_bytes)
            self._episode_dropped += lost
            self._remove(seg)
            index, offset = self._cursor
            self._cursor = (index - 1, offset) if index > 0 else (0, 0)
            self._handed = deque(h for h in self._handed if h.path != seg.path)
        if total <= self.max_bytes * 0.9 and self._episode_dropped:
            log.warning("spool %s: %d line(s) were dropped while it was full", self.dir,
                        self._episode_dropped)
            self._episode_dropped = 0

    def _remove(self, seg: Segment) -> None:
        try:
            seg.path.unlink()
        except OSError as exc:
            log.warning("spool %s: cannot remove %s (%s)", self.dir, seg.path.name,
                        exc.strerror)
        if self._data is not None and self._data[0] == seg.path:
            self._data = None
