"""Messages between the supervisor and its workers: kinds, msgpack encoding, bounded decoding.

Every frame is one msgpack array ``[kind, field, ...]``. Anything that does not
decode to a known kind with fields of the right types raises WireError; the
supervisor answers that by killing the worker that sent it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import msgpack

from vpartcollect.calls import CallKind
from vpartcollect.health import MAX_INSTANCE_CHARS, HealthValue, valid
from vpartcollect.samples import DomainSample, Stats

__all__ = [
    "Busy",
    "DomainSample",
    "Done",
    "FrameDecoder",
    "Hello",
    "Idle",
    "Message",
    "Results",
    "Stats",
    "Tick",
    "WireError",
    "decode",
    "encode",
]

# A frame larger than this is a broken or hostile worker, not a big partition:
# a 64-domain chunk of full QEMU stats packs to well under 1 MiB.
MAX_FRAME_BYTES = 16 * 1024 * 1024

class WireError(ValueError):
    """Bytes on a pipe that are not a valid message."""


@dataclass(frozen=True)
class Hello:
    """A worker connected to libvirt and is ready for ticks."""

    instance: int
    pid: int
    ncpus: int
    driver: str
    bulk_groups: list[str]
    fallback_groups: list[str]


@dataclass(frozen=True)
class Busy:
    """The worker starts a libvirt call that may block: ``kind`` over ``uuids``."""

    kind: CallKind
    uuids: list[str]


@dataclass(frozen=True)
class Idle:
    """The worker left a blocking call without a result (e.g. connect failed)."""

    why: str


@dataclass(frozen=True)
class Results:
    """Samples of domains for the tick stamped ``tick`` (each with its own read time)."""

    tick: float
    domains: list[DomainSample]


@dataclass(frozen=True)
class Done:
    """The worker finished the tick stamped ``tick``."""

    tick: float
    seconds: float
    domains: int
    blocked: int = 0  # calls this worker abandoned that libvirtd is still running
    # The host's health as this worker saw it this tick (health.py): (type, instance, value).
    health: list[HealthValue] = field(default_factory=list)


@dataclass(frozen=True)
class Tick:
    """Supervisor to worker: sample your partition for timestamp ``ts``, minus ``skip``.

    ``suspects`` are domains whose call hung the previous worker: each is reported
    unresponsive while libvirt still shows its monitor busy.
    """

    ts: float
    skip: list[str] = field(default_factory=list)
    suspects: list[str] = field(default_factory=list)


Message = Hello | Busy | Idle | Results | Done | Tick


def encode(msg: Message) -> bytes:
    """Pack one message into a frame."""
    if isinstance(msg, Hello):
        body: list[Any] = [
            "hello", msg.instance, msg.pid, msg.ncpus, msg.driver,
            msg.bulk_groups, msg.fallback_groups,
        ]
    elif isinstance(msg, Busy):
        body = ["busy", msg.kind.value, msg.uuids]
    elif isinstance(msg, Idle):
        body = ["idle", msg.why]
    elif isinstance(msg, Results):
        body = [
            "results", msg.tick,
            [[d.uuid, d.name, d.tag, d.unresponsive, d.stats, d.read_at, d.label, d.read_mono,
              None if d.interfaces is None else [list(i) for i in d.interfaces]]
             for d in msg.domains],
        ]
    elif isinstance(msg, Done):
        body = ["done", msg.tick, msg.seconds, msg.domains, msg.blocked,
                [list(h) for h in msg.health]]
    else:
        body = ["tick", msg.ts, msg.skip, msg.suspects]
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


def _need(value: object, kind: type | tuple[type, ...], what: str) -> Any:
    # bool is an int subclass; a bool where a number belongs is still a broken frame.
    if isinstance(value, bool) and kind is not bool:
        raise WireError(f"{what}: expected {kind}, got bool")
    if not isinstance(value, kind):
        raise WireError(f"{what}: expected {kind}, got {type(value).__name__}")
    return value


def _strings(value: object, what: str) -> list[str]:
    items = _need(value, list, what)
    return [_need(item, str, what) for item in items]


def _number(value: object, what: str) -> float:
    number = float(_need(value, (int, float), what))
    if not math.isfinite(number):
        raise WireError(f"{what}: expected a finite number, got {number!r}")
    return number


_STAT_TYPES = frozenset((int, float, str))  # exact types: a bool is not a statistic
# Values that size a loop on the supervisor's side: integral and bounded, or the frame is bad.
MAX_DEVICES = 4096
# Text a worker reads from libvirt, bounded so no key or name can cost the supervisor more
# than a line: libvirt's stats keys are a few dozen characters; a path is PATH_MAX at most.
MAX_KEY_CHARS = 256
MAX_TEXT_CHARS = 4096
_COUNTS = ("block.count", "net.count", "vcpu.current", "vcpu.maximum")


def _stats(value: object) -> Stats:
    raw: dict[Any, Any] = _need(value, dict, "stats")
    for key, val in raw.items():  # the hot path of decoding: exact type checks only
        if type(key) is not str or type(val) not in _STAT_TYPES:
            raise WireError(f"stats[{_short(key)}]: expected a number or string")
        if not 0 < len(key) <= MAX_KEY_CHARS:
            raise WireError(f"stats key of {len(key)} characters (1-{MAX_KEY_CHARS})")
        if type(val) is str and len(val) > MAX_TEXT_CHARS:
            raise WireError(f"stats[{_short(key)}]: text of {len(val)} characters "
                            f"(at most {MAX_TEXT_CHARS})")
    for key in _COUNTS:
        count = raw.get(key)
        if count is not None and (type(count) is not int or not 0 <= count <= MAX_DEVICES):
            raise WireError(f"stats[{key!r}]: expected an integer 0-{MAX_DEVICES}, "
                            f"got {count!r}")
    return raw


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}... ({len(text)} characters)"


def _text(value: object, what: str) -> str:
    text: str = _need(value, str, what)
    if len(text) > MAX_TEXT_CHARS:
        raise WireError(f"{what}: {len(text)} characters (at most {MAX_TEXT_CHARS})")
    return text


def _sample(value: object) -> DomainSample:
    row = _need(value, list, "domain")
    if len(row) != 9:
        raise WireError("domain: expected 9 fields")
    tag = None if row[2] is None else _text(row[2], "tag")
    label = None if row[6] is None else _text(row[6], "label")
    return DomainSample(
        _text(row[0], "uuid"), _text(row[1], "name"), tag,
        _need(row[3], bool, "unresponsive"), _stats(row[4]), _number(row[5], "read_at"), label,
        None if row[7] is None else _number(row[7], "read_mono"),
        None if row[8] is None else _interfaces(row[8]),
    )


def _rows(value: object, what: str, most: int, shape: str) -> list[list[Any]]:
    """A bounded list of fixed-width rows (``shape`` names their fields)."""
    rows: list[list[Any]] = _need(value, list, what)
    if len(rows) > most:
        raise WireError(f"{what}: {len(rows)} values (at most {most})")
    width = shape.count(",") + 1
    for row in rows:
        if type(row) is not list or len(row) != width:
            raise WireError(f"{what}: expected [{shape}] rows")
    return rows


def _interfaces(value: object) -> list[tuple[str, bool]]:
    return [(_text(row[0], "interface"), _need(row[1], bool, "is a tap"))
            for row in _rows(value, "interfaces", MAX_DEVICES, "device, is a tap")]


def _health(value: object) -> list[HealthValue]:
    out = []
    for row in _rows(value, "health", MAX_HEALTH, "type, instance, value"):
        item = (_need(row[0], str, "health type"), _need(row[1], str, "health instance"),
                _number(row[2], "health value"))
        why = valid(item, MAX_INSTANCE_CHARS)
        if why is not None:
            raise WireError(f"health: {why}")
        out.append(item)
    return out


_ARITY = {"hello": 7, "busy": 3, "idle": 2, "results": 3, "done": 6, "tick": 4}
MAX_HEALTH = 3 * MAX_DEVICES  # two values a datastore, a few more a call kind
_KINDS = {k.value: k for k in CallKind}


def decode(obj: object) -> Message:
    """Turn one unpacked frame into a message, or raise WireError."""
    frame = _need(obj, list, "frame")
    if not frame or not isinstance(frame[0], str) or frame[0] not in _ARITY:
        raise WireError(f"unknown message kind {frame[0]!r}" if frame else "empty frame")
    kind = frame[0]
    if len(frame) != _ARITY[kind]:
        raise WireError(f"{kind}: expected {_ARITY[kind] - 1} fields, got {len(frame) - 1}")
    if kind == "hello":
        return Hello(
            _need(frame[1], int, "instance"), _need(frame[2], int, "pid"),
            _need(frame[3], int, "ncpus"), _need(frame[4], str, "driver"),
            _strings(frame[5], "bulk_groups"), _strings(frame[6], "fallback_groups"),
        )
    if kind == "busy":
        call = _KINDS.get(_need(frame[1], str, "kind"))
        if call is None:
            raise WireError(f"busy: unknown call kind {frame[1]!r}")
        return Busy(call, _strings(frame[2], "uuids"))
    if kind == "idle":
        return Idle(_need(frame[1], str, "why"))
    if kind == "results":
        rows = _need(frame[2], list, "domains")
        return Results(_number(frame[1], "tick"), [_sample(row) for row in rows])
    if kind == "done":
        blocked = _need(frame[4], int, "blocked")
        if not 0 <= blocked <= MAX_DEVICES:
            raise WireError(f"blocked: expected 0-{MAX_DEVICES}, got {blocked}")
        return Done(
            _number(frame[1], "tick"), _number(frame[2], "seconds"),
            _need(frame[3], int, "domains"), blocked, _health(frame[5]),
        )
    return Tick(_number(frame[1], "ts"), _strings(frame[2], "skip"),
                _strings(frame[3], "suspects"))


class FrameDecoder:
    """Streaming decoder for one pipe, with a bounded buffer."""

    def __init__(self, max_frame: int = MAX_FRAME_BYTES) -> None:
        self._unpacker = msgpack.Unpacker(
            raw=False, use_list=True, strict_map_key=True, max_buffer_size=max_frame
        )

    def feed(self, data: bytes) -> list[Message]:
        """Add bytes read from the pipe; return the complete messages they finish."""
        try:
            self._unpacker.feed(data)
            return [decode(obj) for obj in self._unpacker]
        except WireError:
            raise
        except msgpack.BufferFull:
            raise WireError("frame larger than the buffer limit") from None
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise WireError(f"undecodable bytes: {exc}") from None
