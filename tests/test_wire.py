"""Framing: every message kind round-trips; broken or hostile bytes are WireError, not a crash."""

from __future__ import annotations

import msgpack
import pytest

from vpartcollect import wire
from vpartcollect.calls import CallKind

MESSAGES: list[wire.Message] = [
    wire.Hello(2, 1234, 16, "QEMU", ["state", "block"], []),
    wire.Busy(CallKind.STATS, ["u1", "u2"]),
    wire.Idle("connect failed"),
    wire.Results(1700000000.0, [
        wire.DomainSample("u1", "vm-1", "virt-2", False,
                          {"cpu.time": 2**63 + 5, "block.0.name": "vda", "x": 0.5},
                          1700000000.25),
        wire.DomainSample("u2", "vm 2", None, True, {}, 1700000000.5, "web-2"),
        wire.DomainSample("u3", "vm-3", None, False, {}, 1700000000.5, None, 8123.25),
    ]),
    wire.Done(1700000000.0, 0.125, 2),
    wire.Done(1700000000.0, 0.125, 2, 1),
    wire.Done(1700000000.0, 0.125, 2, 1, [("datastore_answering", "nfs:srv:/x", 0.0),
                                          ("libvirtd_seconds", "stats_max", 0.004)]),
    wire.Tick(1700000010.0, ["u1"]),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(msg: wire.Message) -> None:
    assert wire.FrameDecoder().feed(wire.encode(msg)) == [msg]


def test_stream_split_at_every_byte() -> None:
    data = b"".join(wire.encode(m) for m in MESSAGES)
    decoder = wire.FrameDecoder()
    got: list[wire.Message] = []
    for i in range(len(data)):
        got += decoder.feed(data[i : i + 1])
    assert got == MESSAGES


@pytest.mark.parametrize("obj", [
    {"k": "hello"},  # not an array
    [],
    ["nope", 1],
    ["busy", "stats"],  # wrong arity
    ["busy", "stats", [1, 2]],  # uuids not strings
    ["done", "t", 1.0, 3, 0, []],  # tick not a number
    ["done", 1.0, 1.0, True, 0, []],  # bool where an int belongs
    ["done", 1.0, 1.0, 3, -1, []],  # a negative count of blocked calls
    ["done", 1.0, 1.0, 3],  # a field short
    ["done", 1.0, 1.0, 3, 0],  # no health (issue 27's field)
    # Health values (issue 27): known types, bounded names, finite numbers >= 0, bounded count.
    ["done", 1.0, 1.0, 3, 0, [["cpu_secret", "x", 1]]],
    ["done", 1.0, 1.0, 3, 0, [["frozen_qemus", "all"]]],
    ["done", 1.0, 1.0, 3, 0, [["frozen_qemus", "all", float("nan")]]],
    ["done", 1.0, 1.0, 3, 0, [["frozen_qemus", "all", -1]]],
    ["done", 1.0, 1.0, 3, 0, [["frozen_qemus", "all", True]]],
    ["done", 1.0, 1.0, 3, 0, [["datastore_answering", "s" * 257, 1]]],
    ["done", 1.0, 1.0, 3, 0, [["datastore_answering", "", 1]]],
    ["done", 1.0, 1.0, 3, 0, [["frozen_qemus", "all", 1]] * (wire.MAX_HEALTH + 1)],
    ["done", 1.0, 1.0, 3, 0, {"frozen_qemus": 1}],
    ["results", 1.0, 1.0, [["u", "n", None, False, {"k": [1]}, None]]],  # stat value a list
    ["results", 1.0, 1.0, [["u", "n", None, "no", {}, None]]],  # flag not a bool
    ["results", 1.0, 1.0, [["u", "n", None, False, {}]]],  # a field short
    ["hello", 0, 1, 2, "QEMU", ["state"], "block"],
    # Decodes, but the values would size a loop or poison a rate in the supervisor.
    ["results", 1.0, 1.0, [["u", "n", None, False, {"block.count": float("inf")}, None]]],
    ["results", 1.0, 1.0, [["u", "n", None, False, {"block.count": float("nan")}, None]]],
    ["results", 1.0, 1.0, [["u", "n", None, False, {"net.count": 2.0}, None]]],
    ["results", 1.0, 1.0, [["u", "n", None, False, {"vcpu.maximum": 1e300}, None]]],
    ["results", 1.0, 1.0, [["u", "n", None, False, {"vcpu.current": 10**9}, None]]],
    ["results", 1.0, 1.0, [["u", "n", None, False, {"block.count": -1}, None]]],
    # Text past its bound: a key or a name may cost the supervisor a line, not more.
    ["results", 1.0, [["u", "n", None, False, {"k" * 257: 1}, 1.0, None]]],
    ["results", 1.0, [["u", "n", None, False, {"": 1}, 1.0, None]]],
    ["results", 1.0, [["u", "n", None, False, {"vcpu." + "7" * 5000 + ".pin.1": 1}, 1.0,
                       None]]],
    ["results", 1.0, [["u", "n", None, False, {"block.0.path": "/" * 4097}, 1.0, None]]],
    ["results", 1.0, [["u", "n" * 4097, None, False, {}, 1.0, None]]],
    ["results", 1.0, [["u", "n", "virt-" + "1" * 5000, False, {}, 1.0, None]]],
    ["results", float("nan"), 1.0, []],
    ["done", 1.0, float("inf"), 3, 0, []],
    ["tick", float("-inf"), [], []],
])
def test_wrong_shapes_are_rejected(obj: object) -> None:
    with pytest.raises(wire.WireError):
        wire.FrameDecoder().feed(msgpack.packb(obj))


def test_garbage_bytes_are_rejected() -> None:
    with pytest.raises(wire.WireError):
        wire.FrameDecoder().feed(b"\xc1" * 8)  # 0xc1 is never valid msgpack


def test_invalid_utf8_is_rejected() -> None:
    with pytest.raises(wire.WireError):
        wire.FrameDecoder().feed(b"\x92\xa4busy\xa2\xff\xfe")


def test_oversized_frame_is_rejected_without_buffering_it_all() -> None:
    decoder = wire.FrameDecoder(max_frame=1024)
    big = wire.encode(wire.Busy(CallKind.STATS, ["u" * 100] * 50))
    with pytest.raises(wire.WireError):
        decoder.feed(big)


def test_text_at_its_bounds_is_taken() -> None:
    row = ["u", "n" * wire.MAX_TEXT_CHARS, None, False,
           {"k" * wire.MAX_KEY_CHARS: 1, "block.0.path": "/" * wire.MAX_TEXT_CHARS},
           1.0, None, None, None]
    [msg] = wire.FrameDecoder().feed(msgpack.packb(["results", 1.0, [row]]))
    assert isinstance(msg, wire.Results) and len(msg.domains[0].stats) == 2


def test_a_samples_interfaces_go_through_or_the_frame_is_refused() -> None:
    """What a successor's kernel reader will read (roster.py): [device, is a tap] rows."""
    sample = wire.DomainSample("u", "n", None, False, {}, 1.0, None, None,
                               [("vnet0", True), ("", False)])
    [msg] = wire.FrameDecoder().feed(wire.encode(wire.Results(1.0, [sample])))
    assert isinstance(msg, wire.Results) and msg.domains == [sample]
    for bad in ([["vnet0", 1]], [["vnet0"]], [[3, True]], ["vnet0"], {"vnet0": True},
                [["x" * (wire.MAX_TEXT_CHARS + 1), True]], [["t", True]] * (wire.MAX_DEVICES + 1)):
        row = ["u", "n", None, False, {}, 1.0, None, None, bad]
        with pytest.raises(wire.WireError):
            wire.FrameDecoder().feed(msgpack.packb(["results", 1.0, [row]]))
