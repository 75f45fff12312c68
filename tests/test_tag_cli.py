"""``vpartcollect tag`` on libvirt's test driver (in-process: its state lives per process)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
from nodes import write_node
from runner import cli

from vpartcollect.cli import main
from vpartcollect.partition import TAG_NS


@pytest.fixture
def default_conn() -> Iterator[object]:
    """Holds test:///default open so its state survives between CLI calls in this process."""
    conn = libvirt.open("test:///default")
    yield conn
    conn.close()


def current_tag(conn: object, name: str) -> str | None:
    try:
        xml = conn.lookupByName(name).metadata(  # type: ignore[attr-defined]
            libvirt.VIR_DOMAIN_METADATA_ELEMENT, TAG_NS)
    except libvirt.libvirtError:
        return None
    return str(xml)


def test_tag_set_and_clear(default_conn: object, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tag", "--connect", "test:///default", "test", "virt-3"]) == 0
    assert current_tag(default_conn, "test") == "<tag>virt-3</tag>"
    assert main(["plan", "--connect", "test:///default", "--instances", "4", "--json"]) == 0
    assert '"instance": 3' in capsys.readouterr().out
    assert main(["tag", "--connect", "test:///default", "--clear", "test"]) == 0
    assert current_tag(default_conn, "test") is None


@pytest.mark.parametrize(("args", "message"), [
    (["nosuch", "virt-1"], "no domain named 'nosuch'"),
    (["test", "virt-01"], "bad tag 'virt-01'"),
    (["test", "storage-a"], "bad tag 'storage-a'"),
    (["test"], "give DOMAIN and a tag"),
    (["--clear", "test", "virt-1"], "give DOMAIN and a tag"),
    (["--apply", "test", "virt-1"], "--apply goes with --auto"),
])
def test_tag_errors_are_one_line_exit_2(default_conn: object, capsys: pytest.CaptureFixture[str],
                                        args: list[str], message: str) -> None:
    assert main(["tag", "--connect", "test:///default", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert current_tag(default_conn, "test") is None


def test_auto_dry_run_groups_by_storage(tmp_path: Path) -> None:
    def dom(name: str, i: int, source: str) -> str:
        return f"""<domain type='test'><name>{name}</name>
          <uuid>00000000-0000-4000-8000-{i:012x}</uuid><memory>65536</memory>
          <os><type>hvm</type></os><devices>{source}</devices></domain>"""
    rbd = ("<disk type='network' device='disk'><source protocol='rbd' name='ssd/{n}'>"
           "<host name='mon1'/></source><target dev='vda'/></disk>")
    iscsi = ("<disk type='network' device='disk'><source protocol='iscsi' "
             "name='iqn.2020-01.lab:t1/{n}'><host name='san'/></source>"
             "<target dev='vda'/></disk>")
    local = ("<disk type='file' device='disk'><source file='/tmp/{n}.img'/>"
             "<target dev='vda'/></disk>")
    uri = write_node(tmp_path / "n.xml", [
        dom("r1", 1, rbd.format(n=1)), dom("r2", 2, rbd.format(n=2)), dom("r3", 3, rbd.format(n=3)),
        dom("i1", 4, iscsi.format(n=1)), dom("i2", 5, iscsi.format(n=2)),
        dom("l1", 6, local.format(n=1)),
    ])
    res = cli("tag", "--connect", uri, "--auto", "--instances", "3")
    assert res.returncode == 0, res.stderr
    rows = {line.split()[0]: line.split()[2] for line in res.stdout.splitlines()[1:-1]}
    assert {rows["r1"], rows["r2"], rows["r3"]} == {"virt-0"}
    assert {rows["i1"], rows["i2"]} == {"virt-1"}
    assert rows["l1"] == "virt-2"
    assert "dry run" in res.stdout
    applied = cli("tag", "--connect", uri, "--auto", "--instances", "3", "--apply")
    assert applied.returncode == 0 and "tagged 6 domain(s)" in applied.stdout
