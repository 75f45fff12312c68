"""The real CLI against libvirt's test driver: plan, run --once, run until SIGTERM, bad input."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from harness import session_members
from nodes import domain_xml, tagged_node, write_node
from oracle import TRUTH
from runner import COLLECTOR, cli, cli_popen, no_traceback, parse_lines
from seed_tables import SEED_EXAMPLES

DOMAINS = [f"domain-{c}" for c in "ABCDEFGHIJ"]


@pytest.mark.parametrize("example", sorted(SEED_EXAMPLES))
def test_plan_json_reproduces_the_seed_tables(tmp_path: Path, example: str) -> None:
    instances, rows = SEED_EXAMPLES[example]
    uri = tagged_node(tmp_path / "node.xml", [row[1] for row in rows])
    res = cli("plan", "--connect", uri, "--instances", str(instances), "--json")
    assert res.returncode == 0, res.stderr
    got = [(r["domain"], r["tag"], r["instance"], r["reason"]) for r in json.loads(res.stdout)]
    assert got == [tuple(row) for row in rows]
    assert all(set(r) == {"domain", "uuid", "tag", "instance", "reason"}
               for r in json.loads(res.stdout))


def test_plan_table(demo_uri: str) -> None:
    res = cli("plan", "--connect", demo_uri, "--instances", "3")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["DOMAIN", "TAG", "INSTANCE", "REASON"]
    assert lines[4].split() == ["domain-D", "virt-3", "0", "adopted", "by", "instance", "#0"]
    assert lines[2].split() == ["domain-B", "virt-1", "1", "tag", "match"]


def test_run_once_demo_writes_every_kind_of_metric(demo_uri: str) -> None:
    res = cli("run", "--connect", demo_uri, "--instances", "3", "--once", "--extra-stats",
              "cpu_util vcpu memory domain_state")
    assert res.returncode == 0, res.stderr
    no_traceback(res.stderr)
    lines = parse_lines(res.stdout)
    stamps = {ts for _, _, ts in lines}
    assert len(stamps) == 1, "every instance stamps the same timestamp"
    per_domain: dict[str, set[str]] = defaultdict(set)
    for path, _, _ in lines:
        host, plugin, rest = path.split(".", 2)
        if plugin == "virt":
            per_domain[host].add(rest)
    assert sorted(per_domain) == DOMAINS
    for name, paths in per_domain.items():
        nic = f"demo{name[-1].lower()}0"
        for want in ("virt_cpu_total", "percent-virt_cpu_total", "virt_vcpu-0",
                     "memory-total", "memory-actual_balloon", "disk_octets-vda.read",
                     "disk_ops-vda.write", f"if_octets-{nic}.rx", f"if_packets-{nic}.tx",
                     "domain_state.state", "unresponsive"):
            assert want in paths, (name, want)
    values = {p: v for p, v, _ in lines}
    # A rate, from two real samples: the test driver's cpu time is the wall clock.
    assert abs(values["domain-A.virt.virt_cpu_total"] / TRUTH - 1) <= 0.03
    assert values["domain-A.virt.memory-total"] == 512 * 1024 * 1024
    own = [p for p in values if ".vpartcollect-virt-0." in p]
    assert {p.rsplit(".", 1)[1] for p in own} >= {"cycle_seconds", "domains", "watchdog_kills",
                                                  "respawns", "unresponsive_domains"}
    assert values[next(p for p in own if p.endswith(".domains"))] == 6  # A D E F I J


def test_the_test_driver_keeps_libvirtds_counters_and_says_why(demo_uri: str) -> None:
    # The kernel reader stands in for libvirtd only for local QEMU domains: the test
    # driver's values come from libvirt, and each worker says so once at info level.
    res = cli("run", "--connect", demo_uri, "--instances", "2", "--once", "--log-level", "info",
              "--extra-stats", "vcpu")
    assert res.returncode == 0, res.stderr
    said = [line for line in res.stderr.splitlines() if "counters from libvirtd only" in line]
    assert len(said) == 2 and all(
        line.endswith("counters from libvirtd only: the TEST driver's domains have no QEMU "
                      "to read") for line in said), res.stderr
    paths = {p for p, _, _ in parse_lines(res.stdout)}
    for name in DOMAINS:
        nic = f"demo{name[-1].lower()}0"
        assert {f"{name}.virt.virt_cpu_total", f"{name}.virt.virt_vcpu-0",
                f"{name}.virt.if_octets-{nic}.rx"} <= paths, name


def test_run_once_json_format(demo_uri: str) -> None:
    res = cli("run", "--connect", demo_uri, "--instances", "2", "--once", "--format", "json")
    assert res.returncode == 0, res.stderr
    objs = [json.loads(line) for line in res.stdout.splitlines()]
    cpu = next(o for o in objs if o["path"] == "domain-B.virt.virt_cpu_total")
    assert cpu["domain"] == "domain-B" and cpu["tag"] == "virt-1" and cpu["instance"] == 1
    assert set(cpu) == {"path", "value", "timestamp", "domain", "uuid", "tag", "instance"}


def test_include_exclude(demo_uri: str) -> None:
    res = cli("run", "--connect", demo_uri, "--once", "--include", "domain-[A-C]",
              "--exclude", "B$")
    assert res.returncode == 0, res.stderr
    hosts = {p.split(".")[0] for p, _, _ in parse_lines(res.stdout) if ".virt." in p}
    assert hosts == {"domain-A", "domain-C"}


def test_hostile_names_and_metadata(tmp_path: Path) -> None:
    uri = write_node(tmp_path / "n.xml", [
        domain_xml("evil name.with dots", 1, "virt-1"),
        domain_xml("tagged-twice", 2, metadata='<x:tag xmlns:x="urn:x">virt-1</x:tag>'),
    ])
    res = cli("run", "--connect", uri, "--instances", "2", "--once")
    assert res.returncode == 0, res.stderr
    lines = parse_lines(res.stdout)
    assert any(p.startswith("evil_name_with_dots.virt.virt_cpu_total") for p, _, _ in lines)
    plan = json.loads(cli("plan", "--connect", uri, "--instances", "2", "--json").stdout)
    assert [(r["tag"], r["instance"]) for r in plan] == [("virt-1", 1), (None, 0)]


@pytest.mark.parametrize(("args", "message"), [
    (["--instances", "0"], "instances: must be greater than 0"),
    (["--instances", "x"], "'x' is not a valid integer"),
    (["--include", "("], "include[0]: bad regular expression"),
    (["--graphite", "nohost"], "graphite: expected HOST:PORT"),
    (["--connect", "test:///nonexistent/node.xml"], "cannot connect to libvirt at test:///"),
    (["--connect", "bogus+scheme:///x"], "cannot connect to libvirt at bogus+scheme"),
    (["--bogus"], "--bogus"),
    (["-c", "/nonexistent.toml"], "config file /nonexistent.toml: No such file"),
])
def test_bad_input_is_one_line_and_exit_2(demo_uri: str, args: list[str], message: str) -> None:
    full = ["--connect", demo_uri, *args] if "--connect" not in args else args
    res = cli("run", "--once", *full)
    assert res.returncode == 2
    assert res.stdout == ""
    assert res.stderr.count("\n") == 1 and message in res.stderr, res.stderr


def test_config_file_unknown_key(tmp_path: Path, demo_uri: str) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text(f'connect = "{demo_uri}"\ninstancs = 3\n')
    res = cli("check-config", "-c", str(conf))
    assert res.returncode == 2 and "unknown key 'instancs'" in res.stderr
    conf.write_text(f'connect = "{demo_uri}"\ninstances = 3\n')
    res = cli("check-config", "-c", str(conf))
    assert res.returncode == 0 and "3 instance(s)" in res.stdout


def test_run_until_sigterm_aligned_cycles_and_no_leftovers(demo_uri: str) -> None:
    proc = cli_popen("run", "--connect", demo_uri, "--instances", "3", "--interval", "1")
    time.sleep(3.6)
    assert len(session_members(proc.pid)) == 4  # parent + one worker per instance
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    no_traceback(err)
    assert session_members(proc.pid) == []
    lines = parse_lines(out)
    stamps = sorted({ts for _, _, ts in lines})
    assert len(stamps) >= 2 and all(ts == int(ts) for ts in stamps)
    last_full = stamps[-2]
    cpu_hosts = {p.split(".")[0] for p, _, ts in lines
                 if ts == last_full and p.endswith(".virt.virt_cpu_total")}
    assert cpu_hosts == set(DOMAINS)


def test_sigint_stops_cleanly(demo_uri: str) -> None:
    proc = cli_popen("run", "--connect", demo_uri, "--interval", "1")
    assert proc.stdout is not None
    assert proc.stdout.readline()  # running: its first line is out (no guess at start-up time)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    no_traceback(err)
    assert session_members(proc.pid) == []


def test_closed_stdout_ends_quietly(demo_uri: str) -> None:
    proc = cli_popen("run", "--connect", demo_uri, "--interval", "0.5")
    assert proc.stdout is not None
    proc.stdout.readline()
    proc.stdout.close()  # like `| head -1`
    proc.wait(timeout=20)
    err = proc.stderr.read() if proc.stderr else ""
    assert proc.returncode == 0, err
    no_traceback(err)
    assert session_members(proc.pid) == []


def test_sigterm_stops_even_when_nobody_reads_stdout(demo_uri: str) -> None:
    proc = cli_popen("run", "--connect", demo_uri, "--interval", "0.5")
    time.sleep(4)  # the pipe (64 KiB) is full after a few cycles: the collector is stuck
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert session_members(proc.pid) == []


def test_hostname_from_a_metadata_value(tmp_path: Path) -> None:
    uri = write_node(tmp_path / "n.xml", [
        domain_xml("vm-1", 1, metadata='<app:instance xmlns:app="urn:app"><host>web.01'
                                       "</host></app:instance>"),
        domain_xml("vm-2", 2),  # no such metadata: its name is used
    ])
    conf = tmp_path / "c.toml"
    conf.write_text('hostname_format = ["metadata"]\nhostname_metadata_ns = "urn:app"\n'
                    'hostname_metadata_path = "host"\n')
    res = cli("run", "-c", str(conf), "--connect", uri, "--once")
    assert res.returncode == 0, res.stderr
    hosts = {p.split(".")[0] for p, _, _ in parse_lines(res.stdout) if ".virt." in p}
    assert hosts == {"web_01", "vm-2"}
    # collectd's XPath form, for an attribute of the element itself.
    uri = write_node(tmp_path / "n2.xml", [
        domain_xml("vm-3", 3, metadata='<app:instance xmlns:app="urn:app" site="lyon"/>')])
    conf.write_text('hostname_format = ["metadata", "name"]\nhostname_metadata_ns = "urn:app"\n'
                    'hostname_metadata_xpath = "/instance/@site"\n')
    res = cli("run", "-c", str(conf), "--connect", uri, "--once")
    assert {p.split(".")[0] for p, _, _ in parse_lines(res.stdout) if ".virt." in p} == {
        "lyon_vm-3"}


def test_plan_marks_excluded_domains(demo_uri: str) -> None:
    res = cli("plan", "--connect", demo_uri, "--exclude", "-[AB]$", "--json")
    rows = {r["domain"]: r for r in json.loads(res.stdout)}
    assert rows["domain-A"]["instance"] is None
    assert rows["domain-A"]["reason"] == "excluded by include/exclude"
    assert rows["domain-C"]["instance"] == 0


def test_sigterm_during_a_blocked_write_loses_no_line(tmp_path: Path) -> None:
    uri = tagged_node(tmp_path / "n.xml", ["virt-0"] * 200, "vm-")
    proc = cli_popen("run", "--connect", uri, "--interval", "0.5")
    time.sleep(3)  # nobody reads yet: the collector is blocked in a write to stdout
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)  # the reader comes back within the grace a stop gives it
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    lines = parse_lines(out)  # every line whole: nothing torn by the stop
    # Counted against what a sample holds: the first tick has every domain's 2 lines (no
    # rate yet), and every domain written at a later tick (the write that blocked among
    # them) has all of its lines, as many as the most any has at that tick (a second tick
    # read less than min_gap after the first, on a loaded host, has no rate yet either).
    per_tick: dict[float, Counter[str]] = defaultdict(Counter)
    for path, _, ts in lines:
        if path.startswith("vm-"):
            per_tick[ts][path.split(".")[0]] += 1
    first, *later = sorted(per_tick)
    assert len(per_tick[first]) == 200 and set(per_tick[first].values()) == {2}, per_tick[first]
    assert later, "the blocked write never came out"
    # Not "rates came out": on a busy host the tick whose write blocked can be the second,
    # read too soon after the first for a rate (2 lines a domain, seen in a loaded run).
    for ts in later:
        full = max(per_tick[ts].values())
        torn = {d: n for d, n in per_tick[ts].items() if n != full}
        assert not torn, (ts, full, torn)
    print(f"{len(lines)} lines: " + ", ".join(f"{len(per_tick[t])} domains" for t in later))


def test_odd_tags_are_adopted_by_virt0_and_stop_nothing(tmp_path: Path) -> None:
    """One domain's odd tag never stops collection (it used to crash every worker)."""
    uri = write_node(tmp_path / "n.xml", [
        domain_xml("superscript", 1, "virt-\u00b2"),
        domain_xml("huge-number", 2, "virt-" + "9" * 5000),
        domain_xml("fine", 3, "virt-1"),
    ])
    res = cli("run", "--connect", uri, "--instances", "3", "--once")
    assert res.returncode == 0, res.stderr
    no_traceback(res.stderr)
    hosts = {p.split(".")[0] for p, _, _ in parse_lines(res.stdout) if ".virt." in p}
    assert hosts == {"superscript", "huge-number", "fine"}
    # One warning per domain (from virt-0, which samples them), not one per worker or tick.
    assert res.stderr.count("superscript: tag 'virt-\u00b2' is not virt-N") == 1, res.stderr
    assert res.stderr.count("huge-number: tag of 5005 characters") == 3  # every worker reads it
    plan = cli("plan", "--connect", uri, "--instances", "3", "--json")
    assert plan.returncode == 0, plan.stderr
    no_traceback(plan.stderr)
    rows = {r["domain"]: (r["tag"], r["instance"]) for r in json.loads(plan.stdout)}
    assert rows == {"superscript": ("virt-\u00b2", 0), "huge-number": (None, 0),
                    "fine": ("virt-1", 1)}


@pytest.mark.parametrize(("args", "message"), [
    (["--interval", "1e9"], "interval: at most 86400"),
    (["--interval", "2", "--timeout", "5"], "timeout: must be less than interval"),
    (["--chunk-size", "1e400"], "'1e400' is not a valid integer"),
    (["--chunk-size", "9" * 400], "chunk_size: at most 10000"),
])
def test_absurd_flags_are_one_line(demo_uri: str, args: list[str], message: str) -> None:
    res = cli("run", "--once", "--connect", demo_uri, *args)
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and message in res.stderr, res.stderr


def test_a_config_file_that_is_not_utf8(tmp_path: Path, demo_uri: str) -> None:
    conf = tmp_path / "c.toml"
    conf.write_bytes(f'connect = "{demo_uri}"\nhostname = "h\xf4te"\n'.encode("latin-1"))
    res = cli("check-config", "-c", str(conf))
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert "not UTF-8 text" in res.stderr


def test_closed_stdout_without_graphite_is_one_line(demo_uri: str) -> None:
    import subprocess

    res = subprocess.run([*COLLECTOR, "run", "--once", "--connect",
                          demo_uri], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True, timeout=60, check=False,
                         preexec_fn=lambda: __import__("os").close(1))
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and "stdout is closed" in res.stderr


def test_control_characters_in_names_never_forge_a_line(tmp_path: Path) -> None:
    """A carriage return or tab in a name is escaped in plan and logs, as in metric paths."""
    node = tmp_path / "n.xml"
    write_node(node, [domain_xml("cr", 1, "storage-a"),
                      domain_xml("tab", 2, "virt-1")])
    # &#13; keeps a carriage return in the name through XML parsing.
    node.write_text(node.read_text().replace("<name>cr</name>", "<name>evil&#13;INFO: x</name>")
                    .replace("<name>tab</name>", "<name>a&#9;b</name>"))
    uri = f"test://{node.resolve()}"
    plan = cli("plan", "--connect", uri, "--instances", "2")
    assert plan.returncode == 0, plan.stderr
    assert "evil\\rINFO: x" in plan.stdout and "a\\tb" in plan.stdout
    assert "\r" not in plan.stdout + plan.stderr and "\t" not in plan.stdout
    res = cli("run", "--connect", uri, "--instances", "2", "--once")
    assert res.returncode == 0, res.stderr
    assert "\r" not in res.stderr and "evil\\rINFO: x: tag 'storage-a' is not" in res.stderr


def test_a_spool_dir_that_cannot_be_written_is_one_line(tmp_path: Path, demo_uri: str) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    res = cli("run", "--connect", demo_uri, "--graphite", "127.0.0.1:9", "--spool-dir",
              str(blocker / "spool"), "--once")
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "spool_dir" in res.stderr, res.stderr


def test_the_shortest_documented_interval_runs(demo_uri: str) -> None:
    """README: --interval 0.05-86400; 0.05 itself used to be refused."""
    proc = cli_popen("run", "--connect", demo_uri, "--interval", "0.05")
    time.sleep(3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    no_traceback(err)
    assert proc.returncode == 0, err
    stamps = {float(line.split()[2]) for line in out.splitlines()}
    assert len(stamps) >= 5 and all(abs(ts * 20 - round(ts * 20)) < 1e-3 for ts in stamps), stamps
