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

import errno
import logging
import math
import os
import stat
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vpartcollect.output.sinks import segments
from vpartcollect.output.sinks.segments import Record, Skipped

log = logging.getLogger(__name__)

SEGMENT_BYTES = 4 * 1024 * 1024  # a new segment past this size
_CREATE_TRIES = 100


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
        make_private_dir(directory)
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
                data = _read(path)
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
            self._writer = None  # never keep a closed descriptor's number: it gets reused
        number = segments.sequence_of(self._segments[-1].path) + 1 if self._segments else 1
        for attempt in range(_CREATE_TRIES):
            path = self.dir / segments.segment_name(number + attempt)
            try:
                self._writer = _create(path)
            except FileNotFoundError:  # the directory was removed: made again
                self._lost_directory()
                self._writer = _create(path)
            except FileExistsError:  # not ours (a planted file or link): the next number
                log.warning("spool %s: %s is in the way; skipping it", self.dir, path.name)
                continue
            self._segments.append(Segment(path))
            return
        raise OSError(errno.EEXIST, f"{_CREATE_TRIES} segment names in a row are taken")

    def _lost_directory(self) -> None:
        """The spool directory went away with its segments: count what they held as
        dropped, start afresh in a new one."""
        lost = sum(max(s.lines, 0) for s in self._segments)
        self.dropped += lost
        log.warning("spool %s: the directory was removed (%d line(s) lost with it); "
                    "making it again", self.dir, lost)
        self._segments.clear()
        self._handed.clear()
        self._cursor, self._data = (0, 0), None
        make_private_dir(self.dir)

    def _records(self, seg: Segment, offset: int) -> Iterator[Record | Skipped]:
        """The records of a segment from ``offset``: an older segment is read once and
        kept while it is being drained; the newest, which grows, from ``offset`` on."""
        if seg is self._segments[-1]:
            return segments.decode(_read(seg.path, offset), 0, offset)
        if self._data is None or self._data[0] != seg.path:
            self._data = (seg.path, _read(seg.path))
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


def make_private_dir(directory: Path) -> None:
    """Make ``directory`` (0700) if missing; refuse a symbolic link or a non-directory in
    its place, and take group and other access away from one made by an earlier version."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(errno.ENOTDIR, f"{directory} is not a directory (a symbolic link?)")
    if st.st_mode & 0o077 and st.st_uid == os.geteuid():
        os.chmod(directory, 0o700)


def _create(path: Path) -> int:
    """A new segment, for appending; never through a link, never one that exists."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_APPEND
                   | os.O_CLOEXEC, 0o600)


def _read(path: Path, offset: int = 0) -> bytes:
    """A segment's bytes from ``offset``; a symbolic link in its place is refused."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        fh.seek(offset)
        return fh.read()


def check_spool_dir(where: str) -> None:
    """At start: ``where`` exists (made 0700 if not), nobody but us (or root) may write
    in it, and it takes a file (a probe of a fresh name, never through a planted link).
    OSError, with its reason, if not."""
    os.makedirs(where, mode=0o700, exist_ok=True)
    st = os.stat(where)
    if st.st_uid not in (os.geteuid(), 0) or st.st_mode & 0o022:
        raise OSError(errno.EPERM, f"other users may write in it (mode {st.st_mode & 0o7777:o}, "
                                   f"owner uid {st.st_uid}); make it 0700 and ours")
    fd, probe = tempfile.mkstemp(prefix=".vpartcollect-write-test.", dir=where)
    try:
        os.write(fd, b"ok")
    finally:
        os.close(fd)
        os.unlink(probe)


def stranded(spool_dir: Path, in_use: set[str]) -> dict[str, int]:
    """Lines left in ``spool_dir``'s destination directories other than ``in_use`` (a
    destination renamed or removed in the configuration): nobody sends them."""
    found: dict[str, int] = {}
    try:
        entries = [e for e in os.scandir(spool_dir) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return found
    for entry in entries:
        if entry.name in in_use:
            continue
        try:
            lines = sum(segments.count_lines(p) for p in segments.segments(Path(entry.path)))
        except OSError:
            continue
        if lines:
            found[entry.name] = lines
    return found


class Stranded:
    """Lines in ``root`` for destinations no longer configured (directories not
    ``in_use``: renamed or removed), never sent by this configuration. Counted at
    start, at SIGHUP and every RECOUNT seconds (a destination just removed leaves its
    last lines as its spooler stops); each directory is warned about once."""

    RECOUNT = 60.0

    def __init__(self, root: Path | None, in_use: set[str],
                 warned: set[str] | None = None) -> None:
        self.root, self.in_use = root, in_use
        self.warned: set[str] = set(warned or ())
        self.counted_at = -float("inf")
        self.total = 0
        self.lines(time.monotonic())

    def lines(self, now: float) -> int:
        """The count, looked at again when it is RECOUNT seconds old."""
        if self.root is None or now - self.counted_at < self.RECOUNT:
            return self.total
        self.counted_at = now
        found = stranded(self.root, self.in_use)
        for name in sorted(found.keys() - self.warned):
            log.warning("spool %s: %d line(s) left for a destination no longer configured "
                        "are not sent (list it again to send them, or remove the directory)",
                        self.root / name, found[name])
        self.warned |= found.keys()
        self.total = sum(found.values())
        return self.total
