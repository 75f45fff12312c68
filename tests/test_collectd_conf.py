"""collectd.conf as collectd reads it, and what import-collectd makes of it."""

from __future__ import annotations

import random
import tomllib
from pathlib import Path

import pytest
from runner import cli

from vpartcollect.collectd_conf import CollectdConfError, Item, Value, parse, read
from vpartcollect.collectd_import import import_collectd, to_toml
from vpartcollect.config import ConfigError, build


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


def test_includes_files_directories_globs_and_filters(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # collectd takes a relative Include from its directory
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
    # Not from the including file's directory: collectd's wordexp and stat see the
    # current directory (found running collectd 5.12 on such a file).
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "beside.conf").write_text("Interval 3\n")
    (tmp_path / "etc" / "main.conf").write_text('Include "g.conf"\nInclude "beside.conf"\n')
    with pytest.raises(CollectdConfError, match="read from the current directory"):
        read(tmp_path / "etc" / "main.conf")
    (tmp_path / "etc" / "main.conf").write_text('Include "g.conf"\n')
    assert read(tmp_path / "etc" / "main.conf").children[0].values == ["from-glob"]


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
    # Ours alone (issue 27): collectd refuses it, so a collectd.conf with it is no collectd's.
    ('<Plugin virt>\n  ExtraStats "vcpu_delay"\n</Plugin>\n', "unknown selector 'vcpu_delay'"),
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


def test_write_graphite_blocks_of_every_file_are_all_destinations(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 24, 8: configuration management puts one node in collectd.conf and another
    in an included file; collectd writes to both (one writer per node, named by it)."""
    (tmp_path / "conf.d").mkdir()
    monkeypatch.chdir(tmp_path)  # "conf.d" is relative: from the current directory
    (tmp_path / "conf.d" / "graphite.conf").write_text(
        '<Plugin write_graphite>\n  <Node "second">\n    Host "10.0.0.2"\n  </Node>\n'
        '</Plugin>\n<Plugin virt>\n  Domain "b"\n  Instances 2\n</Plugin>\n')
    (tmp_path / "collectd.conf").write_text(
        'FQDNLookup false\nLoadPlugin virt\n<Plugin virt>\n  Domain "a"\n</Plugin>\n'
        '<Plugin write_graphite>\n  <Node "first">\n    Host "10.0.0.1"\n    Port 2004\n'
        '  </Node>\n</Plugin>\nInclude "conf.d/*.conf"\n')
    imported = import_collectd(read(tmp_path / "collectd.conf"))
    assert imported.values["graphite"] == ["10.0.0.1:2004", "10.0.0.2:2003"]
    # Two virt blocks: collectd reads both, lists grow, a later option wins.
    assert imported.values["domains"] == ["a", "b"] and imported.values["instances"] == 2
    assert build(tomllib.loads(to_toml(imported.values))).graphite[1].host == "10.0.0.2"


def test_nodes_as_collectd_registers_them() -> None:
    """A node named like an earlier one replaces it (collectd: "overwriting the old
    entry"); two names for one host and port are one destination, said so."""
    text = ('<Plugin write_graphite>\n  <Node "a">\n    Host "h1"\n  </Node>\n'
            '  <Node "b">\n    Host "h2"\n  </Node>\n</Plugin>\n'
            '<Plugin write_graphite>\n  <Node "a">\n    Host "h3"\n  </Node>\n'
            '  <Node "c">\n    Host "h2"\n  </Node>\n</Plugin>\n')
    imported = import_collectd(parse(text), fqdn=lambda: "hv")
    assert imported.values["graphite"] == ["h3:2003", "h2:2003"]
    notes = "\n".join(imported.notes)
    assert "node a again: collectd replaces the one at collectd.conf:2" in notes
    assert "node c: h2:2003 is already a destination" in notes


def test_a_regex_the_import_cannot_carry_is_one_line_with_its_place(tmp_path: Path) -> None:
    conf = tmp_path / "collectd.conf"
    conf.write_text('<Plugin virt>\n  Domain "/^[[:alpha:]]+-prod$/"\n'
                    '  BlockDevice "/:vd[[.a.]]$/"\n</Plugin>\n')
    res = cli("import-collectd", str(conf))
    assert res.returncode == 2 and res.stdout == "" and res.stderr.count("\n") == 1
    assert f"{conf}:3: BlockDevice: POSIX regular expression" in res.stderr
    assert "collating element" in res.stderr
    conf.write_text('FQDNLookup false\n<Plugin virt>\n  Domain "/^[[:alpha:]]+-prod$/"\n'
                    '</Plugin>\n')
    res = cli("import-collectd", str(conf))
    assert res.returncode == 0, res.stderr
    cfg = build(tomllib.loads(res.stdout))  # carried as written: read as collectd does
    assert cfg.domains == ("/^[[:alpha:]]+-prod$/",)
    assert cfg.wants("web-prod") and not cfg.wants("web1-prod")


HUGE_HEX = "0x" + "f" * 300


@pytest.mark.parametrize("line", [
    "Instances nan", "Instances 1.0e+400", f"Instances {HUGE_HEX}", "Instances inf",
    f"RefreshInterval {HUGE_HEX}", f"Connection {HUGE_HEX}", f"ExtraStats {HUGE_HEX}",
])
def test_numbers_beyond_range_are_one_line_and_status_2(tmp_path: Path, line: str) -> None:
    """Issue 29, 6: these were a ValueError or OverflowError traceback, exit 1."""
    conf = tmp_path / "collectd.conf"
    conf.write_text(f"FQDNLookup false\n<Plugin virt>\n  {line}\n</Plugin>\n")
    res = cli("import-collectd", str(conf))
    assert (res.returncode, res.stdout) == (2, ""), res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert f"{conf}:3: " in res.stderr


BAD_VALUES = ["nan", "inf", "-inf", "1.0e+400", "-1.0e+400", HUGE_HEX, "1e-400", "0x0",
              '"nan"', '"1e999"', "true", "off", "99999999999999999999999", '""', '"\\""',
              "-0", "0", "3.5", "word"]
OPTIONS = {
    "": ["Hostname", "FQDNLookup", "Interval"],
    "virt": ["Connection", "RefreshInterval", "Instances", "Domain", "BlockDevice",
             "InterfaceDevice", "IgnoreSelected", "HostnameFormat", "PluginInstanceFormat",
             "InterfaceFormat", "BlockDeviceFormat", "BlockDeviceFormatBasename",
             "ExtraStats", "ReportBlockDevices", "HostnameMetadataNS",
             "HostnameMetadataXPath"],
    "node": ["Host", "Port", "Protocol", "Prefix", "Postfix", "StoreRates", "EscapeCharacter",
             "SeparateInstances", "ReconnectInterval", "UseTags"],
}


def test_every_option_with_every_odd_value_is_a_config_error_or_loads() -> None:
    """Every option the import reads, with every odd number or word: a one-line error
    (CollectdConfError or ConfigError, both exit 2) or a configuration that loads."""
    for where, keys in OPTIONS.items():
        for key in keys:
            for value in BAD_VALUES:
                line = f"{key} {value}\n"
                text = {"": "FQDNLookup false\n" + line,
                        "virt": f"<Plugin virt>\n{line}</Plugin>\n",
                        "node": f'<Plugin write_graphite>\n<Node "n">\n{line}</Node>\n'
                                "</Plugin>\n"}[where]
                try:
                    imported = import_collectd(parse(text), fqdn=lambda: "hv")
                    build(tomllib.loads(to_toml(imported.values)))
                except (CollectdConfError, ConfigError) as exc:
                    assert "\n" not in str(exc), (line, exc)


def conf_quoted(text: str) -> str:
    """``text`` as a collectd.conf quoted string (liboconfig: a backslash escapes the
    next character)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


STRING_PARTS = ["a", "Z", "0", " ", "-", "/", ":", '"', "\\", "\\\\", "\\\n", "\t", "\n",
                "\r", "\r\n", "\x01", "\x1f", "\x7f", "\x85", "\xa0", "é", "\u200b",
                "\u2028", "\ufeff", "\ue000", "\U000e0001", "\U0001f600", "\U0010ffff",
                "\U00010000", "#", "<", ">", "'", "'''", '"""', "${x}", "[", "]"]


def test_strings_come_back_from_our_toml_exactly(tmp_path: Path) -> None:
    """Issue 29, 6: every string of the collectd.conf is in our TOML as it was (astral,
    non-printable, quotes, backslashes, line ends); an astral non-printable character
    once came back as U+E000 and "1x". Seeded random strings through the whole path:
    the file as read, the import, our TOML, tomllib, the configuration."""
    rng = random.Random(29)
    samples = ["vm\U000e0001x"] + [
        "".join(rng.choice(STRING_PARTS) for _ in range(rng.randint(1, 12)))
        for _ in range(400)]
    conf = tmp_path / "collectd.conf"
    built = 0
    for text in samples:
        conf.write_bytes(f"FQDNLookup false\n<Plugin virt>\n  Connection {conf_quoted(text)}\n"
                         f"  Domain {conf_quoted(text)}\n"
                         f"  HostnameMetadataNS {conf_quoted(text)}\n</Plugin>\n".encode())
        try:
            imported = import_collectd(read(conf))
        except CollectdConfError:
            assert text[0] == "/" == text[-1]  # a /regex/ we cannot read: refused
            continue
        assert imported.values["connect"] == text  # the reader took it as collectd does
        back = tomllib.loads(to_toml(imported.values))
        assert (back["connect"], back["domains"], back["hostname_metadata_ns"]) == \
            (text, [text], text), repr(text)
        try:
            cfg = build(back)
        except ConfigError as exc:  # e.g. a connect of blanks only: one line
            assert "\n" not in str(exc)
            continue
        assert (cfg.connect, cfg.domains, cfg.hostname_metadata_ns) == (text, (text,), text)
        built += 1
    assert built > 300
    res = cli("import-collectd", str(conf))  # and the command, on the last one
    assert res.returncode in (0, 2) and "Traceback" not in res.stderr


def test_the_issues_astral_string_through_the_command(tmp_path: Path) -> None:
    conf = tmp_path / "collectd.conf"
    conf.write_text('FQDNLookup false\n<Plugin virt>\n  Domain "vm\U000e0001x"\n</Plugin>\n')
    res = cli("import-collectd", str(conf))
    assert res.returncode == 0, res.stderr
    assert "\\U000e0001" in res.stdout
    assert build(tomllib.loads(res.stdout)).domains == ("vm\U000e0001x",)


def test_quoted_strings_as_liboconfig_reads_them() -> None:
    """An escaped backslash before a line end is a backslash and a line end, not a
    continued line; a backslash and a line end continue the string (the next line's
    leading blanks dropped); a carriage return inside the quotes stays."""
    assert values('K "a\\\\\nb"\n') == [("K", ["a\\\nb"])]
    assert values('K "a\\\n    b"\n') == [("K", ["ab"])]
    assert values('K "a\rb"\n') == [("K", ["a\rb"])]
    with pytest.raises(CollectdConfError, match=r"collectd\.conf:2: a NUL byte"):
        parse('A 1\nK "a\0b"\n')

