"""The spool's files: append-only segments of checksummed batches of Graphite lines.

A segment is a file ``<sequence>.seg`` holding records, each a batch of whole
lines written with one ``write``::

    magic "VPS1" | payload length u32 | lines u32 | oldest timestamp f64 | crc32 u32
    payload (the lines, each ending in a newline)

The CRC covers the header fields and the payload. A crash or a power loss can
leave a torn record at the end of the newest segment, or garbage anywhere; a
reader detects it (short record, wrong magic, wrong CRC), skips to the next
magic and counts the bytes it skipped, and never fails. Segments are written
and removed whole, oldest first, so the spool is a queue on disk.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"VPS1"
_HEADER = struct.Struct("<4sIId I")  # magic, length, lines, oldest, crc
HEADER_BYTES = _HEADER.size
MAX_RECORD = 64 * 1024 * 1024  # a length beyond this is garbage, not a batch
SUFFIX = ".seg"


def encode(payload: bytes, lines: int, oldest: float) -> bytes:
    """One record: header and payload."""
    crc = zlib.crc32(payload, zlib.crc32(struct.pack("<IId", len(payload), lines, oldest)))
    return _HEADER.pack(MAGIC, len(payload), lines, oldest, crc) + payload


@dataclass(frozen=True)
class Record:
    """One intact batch read back: where it starts and ends in its file, what it holds."""

    start: int
    end: int
    payload: bytes
    lines: int
    oldest: float


@dataclass(frozen=True)
class Skipped:
    """Bytes that are no intact record (torn or corrupt), skipped up to the next one."""

    start: int
    count: int


def decode(data: bytes, start: int = 0, base: int = 0) -> Iterator[Record | Skipped]:
    """The records of ``data`` from ``start``, in order, with what was skipped between;
    positions are given as in the file ``data`` was read from at offset ``base``."""
    pos = start
    bad = 0
    while pos < len(data):
        if data[pos:pos + 4] == MAGIC and pos + HEADER_BYTES <= len(data):
            _magic, length, lines, oldest, crc = _HEADER.unpack_from(data, pos)
            end = pos + HEADER_BYTES + length
            if length <= MAX_RECORD and end <= len(data):
                payload = data[pos + HEADER_BYTES:end]
                check = zlib.crc32(payload, zlib.crc32(struct.pack("<IId", length, lines,
                                                                   oldest)))
                if check == crc:
                    if bad:
                        yield Skipped(base + pos - bad, bad)
                        bad = 0
                    yield Record(base + pos, base + end, payload, lines, oldest)
                    pos = end
                    continue
        # Not an intact record here: skip to the next magic.
        nxt = data.find(MAGIC, pos + 1)
        nxt = len(data) if nxt < 0 else nxt
        bad += nxt - pos
        pos = nxt
    if bad:
        yield Skipped(base + pos - bad, bad)


def segment_name(sequence: int) -> str:
    """The file name of segment number ``sequence`` (names sort as numbers do)."""
    return f"{sequence:016d}{SUFFIX}"


def segments(directory: Path) -> list[Path]:
    """The segments in ``directory``, oldest first (other files are left alone)."""
    found = []
    for entry in os.scandir(directory):
        stem = entry.name[:-len(SUFFIX)]
        if (entry.name.endswith(SUFFIX) and stem.isdigit()
                and entry.is_file(follow_symlinks=False)):  # a planted link is not ours
            found.append(Path(entry.path))
    return sorted(found)


def sequence_of(path: Path) -> int:
    """The number in a segment's name."""
    return int(path.name[:-len(SUFFIX)])


def count_lines(path: Path) -> int:
    """The lines a segment holds, read from its record headers only (the whole file is
    decoded only when a header does not add up: a torn or corrupt segment)."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        lines = pos = 0
        while pos < size:
            header = fh.read(HEADER_BYTES)
            if len(header) < HEADER_BYTES:
                break
            magic, length, count, _oldest, _crc = _HEADER.unpack(header)
            if magic != MAGIC or pos + HEADER_BYTES + length > size:
                break
            lines += count
            pos = fh.seek(length, os.SEEK_CUR)
        else:
            return lines
        fh.seek(0)
        return sum(r.lines for r in decode(fh.read()) if isinstance(r, Record))
