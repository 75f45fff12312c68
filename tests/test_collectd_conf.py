"""collectd.conf as collectd reads it, and what import-collectd makes of it."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from runner import cli

from vpartcollect.collectd_conf import CollectdConfError, Item, Value, parse, read
from vpartcollect.collectd_import import import_collectd, to_toml
from vpartcollect.config import build


def values(text: str) -> list[tuple[str, list[Value]]]:
    """(key, values) of every option of a parsed text, depth first."""
    out: list[tuple[str, list[Value]]] = []

    def walk(children: list[Item]) -> None:
        for item in children:
            out.append((item.key, item.values))
            walk(item.children)
    walk(parse(text).children)
    return out


def test_values_as_collectds_scanner_reads_them() -> None:
    got = values('Hostname "hv \\"01\\""\n'
                 "Interval 2.5\n"
                 "Port 0x10\n"
                 "Octal 0644\n"  # strtod: decimal
                 "On true\nOff no\nCase True\n"  # booleans are lowercase; "True" a word
                 "Address 127.0.0.1:2003\n"
                 "Several name uuid 3\n"
                 "Word 1e5\n")  # not a number to collectd: the longer word wins
    assert got == [("Hostname", ['hv "01"']), ("Interval", [2.5]), ("Port", [16.0]),
                   ("Octal", [644.0]), ("On", [True]), ("Off", [False]), ("Case", ["True"]),
                   ("Address", ["127.0.0.1:2003"]), ("Several", ["name", "uuid", 3.0]),
                   ("Word", ["1e5"])]


def test_blocks_comments_and_continued_lines() -> None:
    text = ("# a comment\n"
            "<Plugin virt> # another\n"
            "  ExtraStats \"disk \\\n"
            "      cpu_util\"\n"
            "  HostnameFormat name \\\n"
            "     uuid\n"
            "  <Node \"a\">\n"
            "  </Node>\n"
            "</Plugin>\n")
    root = parse(text)
    plugin = root.children[0]
    assert (plugin.key, plugin.values) == ("Plugin", ["virt"])
    assert [(c.key, c.values) for c in plugin.children] == [
        ("ExtraStats", ["disk cpu_util"]), ("HostnameFormat", ["name", "uuid"]),
        ("Node", ["a"])]
    assert plugin.children[1].where == "collectd.conf:5"


@pytest.mark.parametrize(("text", "message"), [
    ("<Plugin virt>\nConnection \"x\"\n", "collectd.conf:1: <Plugin> is never closed"),
    ("<Plugin virt>\n</Plugins>\n", "collectd.conf:2: </Plugins> closes <Plugin>"),
    ("</Plugin>\n", "closes no block"),
    ("Connection qemu:///system\n", "collectd.conf:1: unexpected"),
    ("JustAKey\n", "expected Key value"),
    ('Key "unterminated\n', "unexpected"),
    ("<Plugin virt\n", "a block starts as <Key value ...>"),
])
def test_bad_files_are_one_line_with_the_place(text: str, message: str) -> None:
    with pytest.raises(CollectdConfError, match=message) as err:
        parse(text)
    assert "\n" not in str(err.value)


def test_includes_files_directories_globs_and_filters(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "10-virt.conf").write_text("<Plugin virt>\nInstances 2\n</Plugin>\n")
    (tmp_path / "conf.d" / "20-other.txt").write_text("Interval 7\n")
    (tmp_path / "conf.d" / ".hidden.conf").write_text("Interval 99\n")
    (tmp_path / "g.conf").write_text("Hostname \"from-glob\"\n")
    (tmp_path / "collectd.conf").write_text(
        'Interval 10\n<Include "conf.d">\n  Filter "*.conf"\n</Include>\n'
        f'Include "{tmp_path}/g*.conf"\nInclude "conf.d/20-other.txt"\n')
    root = read(tmp_path / "collectd.conf")
    assert [(c.key, c.values) for c in root.children] == [
        ("Interval", [10.0]), ("Plugin", ["virt"]), ("Hostname", ["from-glob"]),
        ("Interval", [7.0])]
    (tmp_path / "loop.conf").write_text('Include "loop.conf"\n')
    with pytest.raises(CollectdConfError, match="nested more than 8 deep"):
        read(tmp_path / "loop.conf")
    (tmp_path / "missing.conf").write_text('Include "nowhere.conf"\n')
    with pytest.raises(CollectdConfError, match="no such file"):
        read(tmp_path / "missing.conf")


FULL = """Hostname "hv01"
FQDNLookup false
Interval 10
LoadPlugin virt
LoadPlugin write_graphite
LoadPlugin cpu
<Plugin virt>
  Connection "qemu:///system"
  Domain "/^prod-/"
  BlockDevice "/:hd[a-z]/"
  IgnoreSelected true
  HostnameFormat name uuid
  PluginInstanceFormat none
  InterfaceFormat Address
  BlockDeviceFormat source
  BlockDeviceFormatBasename true
  ExtraStats "disk cpu_util fs_info"
  PersistentNotification false
  Instances 4
</Plugin>
<Plugin write_graphite>
  <Node "a">
    Host "127.0.0.1"
    Port "2003"
    Prefix "collectd."
    SeparateInstances true
    AlwaysAppendDS true
    StoreRates false
  </Node>
  <Node "b">
    Host "::1"
    Port 2004
    Protocol "udp"
    UseTags true
  </Node>
</Plugin>
"""


def test_import_takes_every_option_that_shapes_the_output() -> None:
    imported = import_collectd(parse(FULL))
    assert imported.values == {
        "hostname": "hv01", "interval": 10.0, "connect": "qemu:///system",
        "domains": ["/^prod-/"], "block_devices": ["/:hd[a-z]/"], "ignore_selected": True,
        "hostname_format": ["name", "uuid"], "plugin_instance_format": [],
        "interface_format": "address", "block_device_format": "source",
        "block_device_format_basename": True, "extra_stats": ["disk", "cpu_util"],
        "instances": 4, "graphite": ["127.0.0.1:2003", "[::1]:2004"],
        "prefix": "collectd.", "separate_instances": True, "always_append_ds": True,
        "store_rates": False}
    notes = "\n".join(imported.notes)
    for what in ("plugins cpu", "fs_info", "PersistentNotification", "Protocol udp",
                 "UseTags", "node b: prefix differs"):
        assert what in notes, what
    cfg = build(tomllib.loads(to_toml(imported.values)))  # what is printed loads
    assert cfg.extra_stats == ("disk", "cpu_util") and cfg.separate_instances


def test_defaults_and_lookups() -> None:
    imported = import_collectd(parse("LoadPlugin virt\n<Plugin virt>\n</Plugin>\n"),
                               fqdn=lambda: "hv01.example.com")
    assert imported.values == {"hostname": "hv01.example.com"}
    assert any("FQDNLookup" in n for n in imported.notes)
    assert any("stdout" in n for n in imported.notes)
    # The virt plugin's own interval wins over the global one.
    imported = import_collectd(parse("Interval 10\n<LoadPlugin virt>\n  Interval 2\n"
                                     "</LoadPlugin>\nFQDNLookup false\n"))
    assert imported.values == {"interval": 2.0}


@pytest.mark.parametrize(("text", "message"), [
    ("<Plugin virt>\n  Bogus 1\n</Plugin>\n", "virt: unknown option 'Bogus'"),
    ('<Plugin virt>\n  ExtraStats "disk nonsense"\n</Plugin>\n', "unknown selector"),
    ("<Plugin virt>\n  IgnoreSelected maybe\n</Plugin>\n", "needs true or false"),
    ('<Plugin write_graphite>\n<Node "a">\nProtocol "sctp"\n</Node>\n</Plugin>\n',
     "Protocol must be tcp or udp"),
])
def test_what_collectd_refuses_the_import_refuses(text: str, message: str) -> None:
    with pytest.raises(CollectdConfError, match=message):
        import_collectd(parse(text))


def test_the_command(tmp_path: Path) -> None:
    conf = tmp_path / "collectd.conf"
    conf.write_text(FULL)
    res = cli("import-collectd", str(conf))
    assert res.returncode == 0, res.stderr
    assert build(tomllib.loads(res.stdout)).instances == 4
    lines = res.stderr.strip().splitlines()
    assert lines and all(line.startswith("import-collectd: ") for line in lines)
    conf.write_text("<Plugin virt>\n")
    res = cli("import-collectd", str(conf))
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and "never closed" in res.stderr
    res = cli("import-collectd", str(tmp_path / "absent.conf"))
    assert res.returncode == 2 and "No such file" in res.stderr
