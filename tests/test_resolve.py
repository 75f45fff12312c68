"""Name lookups for Graphite: ordering, the child's reply, numeric hosts, a real lookup."""

from __future__ import annotations

import os
import selectors
import socket
import time

import msgpack
import pytest

from vpartcollect import children
from vpartcollect.output.sinks.resolve import (
    Lookup,
    decode_reply,
    encode_reply,
    numeric,
    order_addresses,
)

V6 = socket.AF_INET6
V4 = socket.AF_INET


def test_families_alternate_and_the_first_choice_stays_first() -> None:
    infos = [(V6, ("::1", 2003, 0, 0)), (V6, ("fe80::1", 2003, 0, 1)),
             (V4, ("127.0.0.1", 2003)), (V4, ("10.0.0.1", 2003))]
    assert [a[1][0] for a in order_addresses(infos)] == ["::1", "127.0.0.1", "fe80::1",
                                                          "10.0.0.1"]
    only4 = [(V4, ("10.0.0.1", 1)), (V4, ("10.0.0.2", 1))]
    assert [a[1][0] for a in order_addresses(only4)] == ["10.0.0.1", "10.0.0.2"]


def test_duplicates_are_tried_once() -> None:
    infos = [(V4, ("127.0.0.1", 2003)), (V4, ("127.0.0.1", 2003))]
    assert order_addresses(infos) == [(V4, ("127.0.0.1", 2003))]
    assert order_addresses([]) == []


def test_reply_round_trip() -> None:
    addrs, error = decode_reply(encode_reply([(V4, ("127.0.0.1", 2003)),
                                              (V6, ("::1", 2003, 0, 0))]))
    assert (addrs, error) == ([(V4, ("127.0.0.1", 2003)), (V6, ("::1", 2003, 0, 0))], "")
    assert decode_reply(encode_reply(None, "cannot resolve x: boom")) == (
        [], "cannot resolve x: boom")
    assert decode_reply(encode_reply([])) == ([], "name lookup found no address")


def test_a_malformed_reply_is_an_error_not_a_crash() -> None:
    bad = [b"", b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"addresses": [[1, ["/x"]]],
                                                               "error": ""}),
           msgpack.packb({"addresses": [[V4, []]], "error": ""}),
           msgpack.packb({"addresses": [[V4, ["127.0.0.1", "port"]]], "error": ""})]
    for data in bad:
        assert decode_reply(data) == ([], "name lookup gave a malformed answer"), data


def test_numeric_hosts_need_no_lookup() -> None:
    assert numeric("127.0.0.1", 2003) == [(V4, ("127.0.0.1", 2003))]
    assert numeric("::1", 2003) == [(V6, ("::1", 2003, 0, 0))]
    assert numeric("localhost", 2003) is None
    assert numeric("x" * 300, 2003) is None


def _wait(lookup: Lookup) -> tuple[list[tuple[int, tuple[object, ...]]], str]:
    sel = selectors.DefaultSelector()
    sel.register(lookup.fd, selectors.EVENT_READ)
    limit = time.monotonic() + 10
    while time.monotonic() < limit:
        sel.select(1)
        if (outcome := lookup.read()) is not None:
            sel.close()
            return outcome
    raise AssertionError("lookup gave no answer in 10 s")


def test_a_lookup_runs_in_a_child_and_answers_through_its_pipe() -> None:
    lookup = Lookup("localhost", 2003)
    assert lookup.pid and lookup.fd >= 0
    addrs, error = _wait(lookup)
    assert error == "" and (V4, ("127.0.0.1", 2003)) in addrs
    assert lookup.fd == -1 and lookup.pid == 0  # pipe closed, child collected


def test_a_name_that_cannot_be_looked_up_gives_one_line() -> None:
    addrs, error = _wait(Lookup("x" * 300, 2003))  # a label over 63 characters
    assert addrs == [] and error.startswith("cannot resolve ") and "\n" not in error


def test_closing_a_lookup_in_progress_stops_its_child() -> None:
    lookup = Lookup("localhost", 2003)
    pid = lookup.pid
    lookup.close()
    assert lookup.fd == -1 and lookup.pid == 0
    limit = time.monotonic() + 5
    while children.running(pid) and time.monotonic() < limit:
        children.reap()  # the process's one reaper collects it, as the supervisor's loop does
        time.sleep(0.01)
    with pytest.raises(ProcessLookupError):  # killed and collected: no zombie left
        os.kill(pid, 0)


def test_a_lookup_collected_by_the_reaper_is_never_signalled() -> None:
    """Once reaped, a lookup's pid may be another process's: closing it kills nothing."""
    lookup = Lookup("localhost", 2003)
    pid = lookup.pid
    _, status = os.waitpid(pid, 0)  # it answered and exited; the reaper's waitpid(-1)
    assert children.exited(pid, status)  # hands it to its owner
    assert lookup.pid == 0 and not children.running(pid)
    lookup.close()  # must not kill(pid): that pid is free for anyone now
    assert lookup.fd == -1
