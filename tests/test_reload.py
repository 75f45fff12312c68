"""SIGHUP applies every key to a running collector (what it keeps: tests/test_publisher.py)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from listener import Listener
from nodes import domain_xml, write_node
from runner import DEMO_URI, children, run_during


def test_reload_applies_hostname_format(tmp_path: Path) -> None:
    uri = write_node(tmp_path / "n.xml", [
        domain_xml("vm-1", 1, metadata='<app:i xmlns:app="urn:app"><host>web.01</host></app:i>')])
    conf = tmp_path / "c.toml"
    conf.write_text(f'connect = "{uri}"\ninterval = 0.5\n')

    def reload(proc: subprocess.Popen[str]) -> None:
        time.sleep(2.5)
        conf.write_text(f'connect = "{uri}"\ninterval = 0.5\nhostname_format = ["metadata"]\n'
                        'hostname_metadata_ns = "urn:app"\nhostname_metadata_path = "host"\n')
        proc.send_signal(signal.SIGHUP)
        time.sleep(3)

    lines, _stderr, _ = run_during(["run", "-c", str(conf)], reload)
    hosts = [p.split(".")[0] for p, _, _ in lines if ".virt." in p]
    assert hosts[0] == "vm-1" and hosts[-1] == "web_01"


def test_reload_renames_every_domain_path(tmp_path: Path) -> None:
    """A new prefix, postfix, escape character and hostname format reach the domains'
    paths from the next tick, not only the collector's own metrics."""
    uri = write_node(tmp_path / "n.xml", [domain_xml("vm.1", 1)])
    conf = tmp_path / "c.toml"
    conf.write_text(f'connect = "{uri}"\ninterval = 0.5\nhostname = "hv"\n')

    def reload(proc: subprocess.Popen[str]) -> None:
        time.sleep(2.5)
        conf.write_text(f'connect = "{uri}"\ninterval = 0.5\nhostname = "hv"\n'
                        'prefix = "kvm."\npostfix = ".dc1"\nescape_character = "-"\n'
                        'hostname_format = ["hostname", "name"]\n')
        proc.send_signal(signal.SIGHUP)
        time.sleep(3)

    lines, stderr, _ = run_during(["run", "-c", str(conf)], reload)
    domain_paths = [p for p, _, _ in lines if ".virt." in p]
    assert domain_paths[0].startswith("vm_1.virt.")
    reloaded = lines.index(next(line for line in lines if line[0].startswith("kvm.")))
    after = [p for p, _, _ in lines[reloaded:] if ".virt." in p]
    assert after and all(p.startswith("kvm.hv-vm-1.dc1.virt.") for p in after), after[:5]
    assert "configuration reloaded" in stderr


def test_a_new_graphite_buffer_keeps_the_spooled_connection(tmp_path: Path) -> None:
    """README: an unchanged destination keeps its connection; with a spool, a reload that
    changes only graphite_buffer used to stop the spooler and connect again."""
    listener = Listener()
    conf = tmp_path / "c.toml"
    text = (f'connect = "{DEMO_URI}"\ninterval = 0.5\nstdout = true\n'
            f'graphite = ["127.0.0.1:{listener.port}"]\nspool_dir = "{tmp_path / "spool"}"\n')
    conf.write_text(text + "graphite_buffer = 1000\n")

    def reload(proc: subprocess.Popen[str]) -> tuple[int, list[int], list[int]]:
        time.sleep(2.5)
        connections, before = listener.accepted, children(proc.pid)
        conf.write_text(text + "graphite_buffer = 5000\n")
        proc.send_signal(signal.SIGHUP)
        time.sleep(2.5)
        return connections, before, children(proc.pid)

    _lines, stderr, (connections, before, after) = run_during(["run", "-c", str(conf)],
                                                              reload)
    assert "configuration reloaded" in stderr
    assert connections >= 1 and listener.accepted == connections, stderr
    assert before == after  # the spooler (and the worker) went on
