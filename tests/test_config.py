"""Configuration: defaults, overrides, and one clear line for every mistake."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from vpartcollect.config import ConfigError, Endpoint, build, load, parse_endpoint


def test_defaults_are_collectd_like() -> None:
    cfg = build()
    assert (cfg.connect, cfg.instances, cfg.interval) == ("qemu:///system", 1, 10.0)
    assert cfg.use_stdout and cfg.store_rates and cfg.hostname_format == ("name",)
    assert cfg.call_timeout == 5.0


def test_file_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('connect = "test:///default"\ninstances = 4\ninterval = 2\n'
                    'graphite = ["127.0.0.1:2003", "[::1]:2004"]\ninclude = ["^prod-"]\n')
    cfg = load(path, {"instances": 2, "interval": None})
    assert cfg.instances == 2 and cfg.interval == 2.0 and cfg.call_timeout == 1.0
    assert cfg.graphite == (Endpoint("127.0.0.1", 2003), Endpoint("::1", 2004))
    assert not cfg.use_stdout
    assert cfg.wants("prod-db") and not cfg.wants("test-db")


def test_collectd_domain_list_keeps_or_drops(tmp_path: Path) -> None:
    """collectd's Domain entries (exact or /regex/), kept or with IgnoreSelected dropped;
    a reload's new list applies, not the one the old config worked out."""
    path = tmp_path / "c.toml"
    path.write_text('domains = ["db-1", "/^web-/"]\n')
    keep = load(path, {})
    assert [keep.wants(d) for d in ("db-1", "web-7", "db-2")] == [True, True, False]
    drop = dataclasses.replace(keep, ignore_selected=True)
    assert [drop.wants(d) for d in ("db-1", "web-7", "db-2")] == [False, False, True]
    assert keep.wants("db-1")


@pytest.mark.parametrize(("values", "message"), [
    ({"instance": 2}, "unknown key 'instance'"),
    ({"instances": "4"}, "instances: must be an integer, got str '4'"),
    ({"instances": 0}, "instances: must be greater than 0"),
    ({"instances": 65}, "instances: at most 64"),
    ({"instances": True}, "instances: must be an integer, got a boolean"),
    ({"interval": -1}, "interval: must be at least 0.05"),
    ({"interval": 0.049}, "interval: must be at least 0.05, got 0.049"),
    ({"interval": float("nan")}, "interval: must be at least"),
    ({"include": ["("]}, "include[0]: bad regular expression '('"),
    ({"exclude": "[z-a]"}, "exclude[0]: bad regular expression"),
    ({"graphite": ["carbon"]}, "graphite: expected HOST:PORT, got 'carbon'"),
    ({"graphite": ["carbon:99999"]}, "graphite: port must be 1-65535"),
    ({"format": "xml"}, "format: must be one of graphite, json"),
    ({"hostname": "my host"}, "hostname: only printable ASCII"),
    ({"hostname_format": "name ip"}, "hostname_format: unknown field 'ip'"),
    ({"escape_character": "."}, "escape_character: must be one character"),
    ({"stdout": "yes"}, "stdout: must be true or false"),
    ({"connect": ""}, "connect: must not be empty"),
    # Absurd sizes: one line each, never an OverflowError or a loop that cannot end.
    ({"instances": 10**400}, "instances: at most 64, got 1000000000"),
    ({"interval": 10**400}, "interval: must be a number, got an integer of 401 digits"),
    ({"interval": 1e9}, "interval: at most 86400, got 1000000000.0"),
    ({"refresh_interval": float("inf")}, "refresh_interval: must be greater than 0, got inf"),
    ({"flush_timeout": 1e300}, "flush_timeout: at most 3600"),
    ({"graphite_resend_seconds": 1e12}, "graphite_resend_seconds: at most 86400"),
    ({"timeout": 4000}, "timeout: at most 3600"),
    ({"chunk_size": 10**6}, "chunk_size: at most 10000"),
    ({"chunk_size": 1e400}, "chunk_size: must be an integer, got float inf"),
    ({"graphite_buffer": 10**9}, "graphite_buffer: at most 100000000"),
    ({"interval": 2, "timeout": 2}, "timeout: must be less than interval (2 s), got 2"),
    ({"hostname_metadata_path": "/abs"}, "hostname_metadata_path: not a relative ElementTree"),
    ({"hostname_metadata_path": "a[@"}, "hostname_metadata_path: not a relative ElementTree"),
])
def test_errors_name_the_key(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        build(values)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file .*missing\.toml: No such file"):
        load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("instances = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(bad)


def test_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.toml"
    bad.write_bytes('hostname = "h\xf4te"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.toml: not UTF-8 text \(byte 13\)"):
        load(bad)


def test_metadata_paths_that_work() -> None:
    for path in (".", "name", "./host/name", "{urn:x}name", "a[@k='v']"):
        assert build({"hostname_metadata_path": path}).hostname_metadata_path == path


def test_endpoint_parsing() -> None:
    assert parse_endpoint("carbon.example:2003") == Endpoint("carbon.example", 2003)
    assert str(parse_endpoint("[::1]:2003")) == "[::1]:2003"


@pytest.mark.parametrize(("values", "message"), [
    ({"spool_dir": ""}, "spool_dir: must be a directory path"),
    ({"spool_dir": 5}, "spool_dir: must be a string"),
    ({"spool_max_bytes": 1000}, "spool_max_bytes: must be greater than 65536"),
    ({"spool_max_bytes": 1 << 50}, "spool_max_bytes: at most"),
    ({"spool_drain_rate": 0}, "spool_drain_rate: must be greater than 0"),
])
def test_spool_keys_are_bounded(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build(values)


def test_the_environments_spool_dir_yields_to_the_file_and_the_flags(tmp_path: Path) -> None:
    """Under systemd the state directory is the spool's default; the file or a flag wins."""
    path = tmp_path / "c.toml"
    path.write_text('spool_dir = "/srv/spool"\n')
    fallback = {"spool_dir": "/var/lib/vpartcollect/spool"}
    assert load(None, {}, fallback).spool_dir == "/var/lib/vpartcollect/spool"
    assert load(path, {}, fallback).spool_dir == "/srv/spool"
    assert load(path, {"spool_dir": "/x"}, fallback).spool_dir == "/x"
    assert build().spool_dir is None  # nothing said: lines wait in memory only


def test_forget_after_is_bounded(tmp_path: Path) -> None:
    """forget_after (how long an unsampled domain is remembered) defaults to 60 s; 0 or a
    day and more is a one-line error."""
    assert build().forget_after == 60.0
    assert build({"forget_after": 12}).forget_after == 12.0
    for bad in (0, 86401, "soon"):
        with pytest.raises(ConfigError, match="forget_after"):
            build({"forget_after": bad})


def test_the_documented_interval_range_is_accepted() -> None:
    """README: 0.05-86400, both ends included."""
    assert build({"interval": 0.05}).interval == 0.05
    assert build({"interval": 86400}).interval == 86400.0


def test_a_deeply_nested_file_is_one_line(tmp_path: Path) -> None:
    """tomllib recurses once per bracket: 500 of them used to escape as RecursionError."""
    deep = tmp_path / "deep.toml"
    deep.write_text("include = " + "[" * 500 + "]" * 500 + "\n")
    with pytest.raises(ConfigError, match=r"deep\.toml: not valid TOML: nested too deeply"):
        load(deep)


def test_our_own_extra_stats_selector() -> None:
    """Issue 27: vcpu_delay is accepted in extra_stats (any case) beside collectd's; a
    misspelt one is a one-line error naming it and every selector there is."""
    assert build({"extra_stats": "vcpu VCPU_delay"}).extra_stats == ("vcpu", "vcpu_delay")
    with pytest.raises(ConfigError) as err:
        build({"extra_stats": "vcpu_delays"})
    assert "\n" not in str(err.value)
    assert "unknown selector 'vcpu_delays'" in str(err.value) and "vcpu_delay" in str(err.value)
