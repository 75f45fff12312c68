"""Seeded fuzzing of what comes from outside: config files and worker frames.

A config file must give a Config or one line of ConfigError; a worker frame must
give a message the supervisor handles, or a WireError (the worker is killed):
never another exception. The generators are seeded, so a failure reproduces.
"""

from __future__ import annotations

import math
import random
import struct
from pathlib import Path
from typing import Any

import msgpack
import pytest
from capture import capture_sinks
from runner import cli, no_traceback

from vpartcollect import wire
from vpartcollect.config import _KEYS, Config, ConfigError, load
from vpartcollect.output.publisher import BadSample
from vpartcollect.supervisor import Supervisor

CASES = 3000

STRINGS = ["", "virt-0", "a.b", "x" * 5000, "\n", "\x00\x1b[2J", "é²", "a[@", "/abs", ".",
           "{name}", "127.0.0.1:2003", "[::1]:2003", "host:99999", "debug", "json", "uuid",
           "name,uuid", "metadata", "(", "\ud7ff", "-", "graphite"]
NUMBERS: list[Any] = [0, 1, -1, 2, 63, 64, 65, 10_000, 10**400, -(10**400), 2**63, 0.5, 0.04,
                      1e9, 1e300, -0.0, math.inf, -math.inf, math.nan, 86400, 3600.1]


def toml_value(rng: random.Random, depth: int = 0) -> str:
    """One random TOML value, literally (strings with escapes, odd numbers, nests)."""
    kind = rng.randrange(9 if depth < 2 else 6)
    if kind == 0:
        return rng.choice(["true", "false"])
    if kind == 1:
        n = rng.choice(NUMBERS)
        if isinstance(n, float) and not math.isfinite(n):
            return {math.inf: "inf", -math.inf: "-inf"}.get(n, "nan")
        return repr(n) if isinstance(n, float) else str(n)
    if kind == 2:
        return '"' + "".join(f"\\u{ord(c):04x}" for c in rng.choice(STRINGS)) + '"'
    if kind == 3:
        return rng.choice(["1979-05-27T07:32:00Z", "07:32:00", "1979-05-27"])
    if kind == 4:
        return str(rng.randint(-(10**30), 10**30))
    if kind == 5:
        return f"{rng.uniform(-1e6, 1e6)!r}"
    if kind in (6, 7):
        return "[" + ", ".join(toml_value(rng, depth + 1) for _ in range(rng.randrange(4))) + "]"
    return "{" + ", ".join(f"k{i} = {toml_value(rng, depth + 1)}"
                           for i in range(rng.randrange(3))) + "}"


# Plausible values, so that a case gets past the first check and reaches the later ones.
GOOD = {"interval": ["1", "10", "0.05", "86400"], "timeout": ["0.5", "3600"],
        "instances": ["1", "4", "64"], "chunk_size": ["1", "32"], "graphite_buffer": ["10"],
        "refresh_interval": ["60"], "flush_timeout": ["5"], "graphite_resend_seconds": ["30"],
        "hostname_format": ['"name"', '"metadata"', '"uuid name"'],
        "hostname_metadata_ns": ['"urn:x"'], "hostname_metadata_path": ['"a/b"', '"."'],
        "graphite": ['["127.0.0.1:2003"]', '["[::1]:2003", "carbon:2004"]'],
        "format": ['"json"'], "log_level": ['"INFO"'], "escape_character": ['"_"'],
        "include": ['["^a"]'], "exclude": ['["("]'], "connect": ['"test:///default"']}


def random_config(rng: random.Random) -> str:
    keys = [*sorted(_KEYS), "nonsense", "interval-", "Instances"]
    lines = []
    for key in rng.sample(keys, rng.randrange(1, 6)):
        good = GOOD.get(key)
        value = rng.choice(good) if good and rng.random() < 0.6 else toml_value(rng)
        lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


def test_random_config_files_give_a_config_or_one_line(tmp_path: Path) -> None:
    rng = random.Random(20261125)
    path = tmp_path / "fuzz.toml"
    outcomes = {"ok": 0, "error": 0}
    for case in range(CASES):
        text = random_config(rng)
        path.write_text(text)
        try:
            assert isinstance(load(path), Config)
            outcomes["ok"] += 1
        except ConfigError as exc:
            assert "\n" not in str(exc), (case, text, str(exc))
            outcomes["error"] += 1
        except Exception as exc:  # the defect this test exists for
            pytest.fail(f"case {case}: {type(exc).__name__}: {exc}\n{text}")
    assert outcomes["ok"] > 50 and outcomes["error"] > 50, outcomes  # both paths exercised


def test_random_config_files_through_check_config_are_one_line(tmp_path: Path) -> None:
    rng = random.Random(7)
    path = tmp_path / "fuzz.toml"
    for _ in range(15):
        path.write_text(random_config(rng))
        proc = cli("check-config", "-c", str(path))
        no_traceback(proc.stderr)
        assert proc.returncode in (0, 2)
        if proc.returncode == 2:
            assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


STAT_KEYS = ["state.state", "state.reason", "cpu.time", "cpu.user", "cpu.system",
             "balloon.current", "balloon.maximum", "balloon.rss", "balloon.available",
             "balloon.usable", "balloon.last-update", "vcpu.current", "vcpu.maximum",
             "vcpu.0.time", "vcpu.0.state", "vcpu.7.time", "net.count", "net.0.name",
             "net.0.rx.bytes", "net.0.tx.pkts", "block.count", "block.0.name", "block.0.path",
             "block.0.rd.bytes", "block.0.wr.reqs", "block.0.allocation", "block.0.capacity",
             "block.0.physical", "block.0.fl.times", "block.1.name", "perf.cmt", "x", ""]


def wire_value(rng: random.Random, depth: int = 0) -> Any:
    """A random msgpack-able value, biased to the edges."""
    kind = rng.randrange(8 if depth < 2 else 6)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.choice([0, 1, -1, 4096, 4097, 2**63 - 1, -(2**63), 2**64 - 1, 3])
    if kind == 2:
        return rng.choice([0.0, -0.0, 0.5, 1e300, -1e300, math.inf, -math.inf, math.nan,
                           1.5e9, 5e-324])
    if kind == 3:
        return rng.choice(STRINGS)
    if kind == 4:
        return rng.randbytes(rng.randrange(8))
    if kind == 5:
        return rng.uniform(-1e12, 1e12)
    if kind == 6:
        return [wire_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(STAT_KEYS): wire_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def stats(rng: random.Random) -> dict[str, Any]:
    """Stats of one domain: wire-legal types with values at the edges, sometimes not."""
    legal = [0, 1, 2, 7, 4096, 10**6, 2**63 - 1, -(2**63), 2**64 - 1, -1, 1e9, 0.25, 1e300,
             -1e300, math.inf, -math.inf, math.nan, "vda", "", "\n", "a b"]
    return {rng.choice(STAT_KEYS): (wire_value(rng) if rng.random() < 0.05
                                    else rng.choice(legal))
            for _ in range(rng.randrange(20))}


def frame(rng: random.Random) -> list[Any]:
    """A frame of a real kind whose fields are right-typed most of the time."""
    kind = rng.choice(["hello", "busy", "idle", "results", "results", "results", "done",
                       "tick", "nope"])
    right = 0.98 if kind == "results" else 0.8

    def pick(good: Any) -> Any:
        return good if rng.random() < right else wire_value(rng)

    if kind == "hello":
        body = [pick(0), pick(1234), pick(rng.choice([1, 2, 0, -1, 2**40])), pick("QEMU"),
                pick(["state", "cpu-total"]), pick([])]
    elif kind == "busy":
        body = [pick(rng.choice(["stats", "list", "describe", "connect", "frozen", "x"])),
                pick([f"u{rng.randrange(5)}" for _ in range(rng.randrange(3))])]
    elif kind == "idle":
        body = [pick("connect failed")]
    elif kind == "results":
        rows = [[pick(f"u{rng.randrange(5)}"), pick(rng.choice(STRINGS)),
                 pick(rng.choice(["virt-0", None, "virt-²"])), pick(rng.random() < 0.2),
                 pick(stats(rng)), pick(1_800_000_000.5 + rng.random()),
                 pick(rng.choice([None, "lbl"]))]
                for _ in range(rng.randrange(6))]
        body = [pick(1_800_000_000.0 + rng.randrange(100)), pick(rows)]
    elif kind == "done":
        body = [pick(1_800_000_000.0 + rng.randrange(100)), pick(0.1), pick(3), pick(0)]
    elif kind == "tick":
        body = [pick(1.0), pick([]), pick([])]
    else:
        body = []
    if rng.random() < 0.05:
        body = body[:-1] if body else [1]
    return [kind, *body]


def test_random_worker_frames_are_handled_or_refused(tmp_path: Path) -> None:
    rng = random.Random(1125)
    with capture_sinks() as made:  # what the sinks are handed
        sup = Supervisor(load(None, {"connect": "test:///default", "instances": 2,
                                     "stdout": False}))
    refused = handled = 0
    for case in range(CASES):
        slot = sup.slots[case % 2]
        slot.current = wire.Tick(1_800_000_000.0 + case % 100)
        data = msgpack.packb(frame(rng), use_bin_type=True)
        if rng.random() < 0.1:  # and plain corruption: flipped bytes, cut frames
            flip = bytearray(data)
            flip[rng.randrange(len(flip))] ^= 1 << rng.randrange(8)
            data = bytes(flip[: rng.randrange(1, len(flip) + 1)])
        try:
            messages = wire.FrameDecoder().feed(data)
        except wire.WireError as exc:
            assert "\n" not in str(exc)
            refused += 1
            continue
        try:
            for msg in messages:
                sup.handle(slot, msg)
            handled += 1
        except (wire.WireError, BadSample):  # a frame it cannot use: its worker is killed
            refused += 1
        except Exception as exc:  # the defect this test exists for
            pytest.fail(f"case {case}: {type(exc).__name__}: {exc}: {data!r}")
    lines = made[0].lines
    for line in lines:  # no value may forge or break a Graphite line
        _path, value, ts = line.rstrip("\n").split(" ")
        assert line.count("\n") == 1 and math.isfinite(float(value)), line
        struct.pack("d", float(ts))
    assert refused > 100 and handled > 100 and lines, (refused, handled)
