"""Configuration: a TOML file plus CLI overrides -> one frozen, validated Config.

Every problem is reported as one ConfigError line that names the key.
"""

from __future__ import annotations

import math
import re
import socket
import tomllib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any

from vpartcollect.collectd_values import (
    EXTRA_STATS,
    OWN_EXTRA_STATS,
    IgnoreList,
    Selection,
    entry_error,
)
from vpartcollect.output.naming import HOSTNAME_FIELDS, PLUGIN_INSTANCE_FIELDS, Naming
from vpartcollect.partition import Assignment, assign

MAX_INSTANCES = 64
# Upper bounds: beyond them a value is a typo, and some would overflow a timer or a loop.
MAX_SECONDS = {"interval": 86400.0, "refresh_interval": 86400.0, "timeout": 3600.0,
               "flush_timeout": 3600.0, "graphite_resend_seconds": 86400.0,
               "spool_drain_rate": 10_000_000.0,  # lines a second
               "forget_after": 86400.0}
MIN_SECONDS = {"interval": 0.05, "spool_max_bytes": 65536, "forget_after": 1.0}
MIN_INCLUSIVE = frozenset({"interval"})  # 0.05-86400: the README's range includes 0.05
# 0 is a choice here: no resend window (in front of a carbon-aggregator, which would sum).
ZERO_MEANS_NONE = frozenset({"graphite_resend_seconds"})
MAX_COUNT = {"instances": MAX_INSTANCES, "chunk_size": 10_000, "graphite_buffer": 100_000_000,
             "spool_max_bytes": 1 << 44}
FORMATS = ("graphite", "json")
# collectd's defaults for a hostname or plugin instance taken from domain metadata.
NOVA_NS = "http://openstack.org/xmlns/libvirt/nova/1.0"
NOVA_XPATH = "/instance/name/text()"
_FLAGS = ("store_rates", "stdout", "block_device_format_basename", "ignore_selected",
          "report_block_devices", "report_network_interfaces", "separate_instances",
          "always_append_ds", "drop_duplicate_fields", "preserve_separator", "reverse_host",
          "kernel_reader", "prometheus_timestamps")
_CHOICES = {"format": ("graphite", "json"), "interface_format": ("name", "address", "number"),
            "block_device_format": ("target", "source")}
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(ValueError):
    """A configuration problem, worded for the operator in one line."""


@dataclass(frozen=True)
class Endpoint:
    """A Graphite plaintext destination."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Config:
    """Everything the collector needs, validated."""

    connect: str = "qemu:///system"
    instances: int = 1
    interval: float = 10.0
    refresh_interval: float = 60.0
    timeout: float | None = None  # None: min(5, interval / 2)
    chunk_size: int = 32
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    hostname: str = field(default_factory=socket.gethostname)
    graphite: tuple[Endpoint, ...] = ()
    stdout: bool | None = None  # None: on when no graphite (nor prometheus) is set
    format: str = "graphite"
    store_rates: bool = True
    prefix: str = ""
    postfix: str = ""
    escape_character: str = "_"
    hostname_format: tuple[str, ...] = ("name",)
    plugin_instance_format: tuple[str, ...] = ()
    hostname_metadata_ns: str = ""  # for hostname_format "metadata": the element's namespace
    hostname_metadata_path: str = "."  # ...and the path of the value inside that element
    hostname_metadata_xpath: str = ""  # or collectd's XPath (/element/.../text() or /@attr)
    # collectd virt's options that shape what is written (same names, same defaults).
    extra_stats: tuple[str, ...] = ()
    interface_format: str = "name"
    block_device_format: str = "target"
    block_device_format_basename: bool = False
    domains: tuple[str, ...] = ()  # collectd's Domain list ("name" or "/regex/")
    block_devices: tuple[str, ...] = ()  # BlockDevice ("domain:device" or "/regex/")
    interface_devices: tuple[str, ...] = ()  # InterfaceDevice
    ignore_selected: bool = False
    report_block_devices: bool = True
    report_network_interfaces: bool = True
    # Read cpu, vCPU and interface counters of local QEMU domains from the kernel, as
    # libvirtd does, instead of asking libvirtd (worker/kernel_reader.py).
    kernel_reader: bool = True
    # write_graphite's path options.
    separate_instances: bool = False
    always_append_ds: bool = False
    drop_duplicate_fields: bool = False
    preserve_separator: bool = False
    reverse_host: bool = False
    graphite_buffer: int = 100_000
    graphite_resend_seconds: float = 30.0
    flush_timeout: float = 5.0
    spool_dir: str | None = None  # None: lines wait in memory only (graphite_buffer)
    spool_max_bytes: int = 1 << 30
    spool_drain_rate: float = 50_000.0  # spooled lines sent a second once carbon is back
    log_level: str = "info"
    # A domain not sampled for this long (or 10 intervals, if longer) is forgotten.
    forget_after: float = 60.0
    prometheus: Endpoint | None = None  # where the Prometheus endpoint listens (None: off)
    web_config: str | None = None  # exporter-toolkit's web configuration (TLS, basic auth)
    prometheus_timestamps: bool = False  # each series stamped with its sample's tick

    @property
    def call_timeout(self) -> float:
        """Seconds a worker may spend in one blocking libvirt call, before per-domain slack."""
        return self.timeout if self.timeout is not None else min(5.0, self.interval / 2)

    @property
    def use_stdout(self) -> bool:
        """Whether metrics go to stdout."""
        # Not beside a Prometheus endpoint either: under systemd stdout is the journal.
        return self.stdout if self.stdout is not None else \
            not self.graphite and self.prometheus is None

    def naming(self) -> Naming:
        """The path-naming rules of this configuration."""
        return Naming(self.prefix, self.postfix, self.escape_character, self.hostname,
                      self.hostname_format, self.plugin_instance_format,
                      self.separate_instances, self.always_append_ds,
                      self.drop_duplicate_fields, self.preserve_separator, self.reverse_host)

    def selection(self) -> Selection:
        """Which values are written (collectd virt's options)."""
        return Selection(frozenset(self.extra_stats), self.interface_format,
                         self.block_device_format, self.block_device_format_basename,
                         IgnoreList(self.block_devices, self.ignore_selected),
                         IgnoreList(self.interface_devices, self.ignore_selected),
                         self.report_block_devices, self.report_network_interfaces)

    def label_spec(self) -> tuple[str, str, str | None] | None:
        """(namespace, ElementTree path, attribute) of the metadata value a hostname or
        plugin instance format names; None when none does."""
        if "metadata" not in self.hostname_format + self.plugin_instance_format:
            return None
        if self.hostname_metadata_xpath or not self.hostname_metadata_ns:
            path, attribute = xpath_to_path(self.hostname_metadata_xpath or NOVA_XPATH)
            return self.hostname_metadata_ns or NOVA_NS, path, attribute
        return self.hostname_metadata_ns, self.hostname_metadata_path, None

    @cached_property
    def _ignore_list(self) -> IgnoreList:
        # Built once: every worker asks for every listed domain at every tick.
        return IgnoreList(self.domains, self.ignore_selected)

    def wants(self, domain: str) -> bool:
        """Whether the include/exclude regexes, and collectd's Domain list, keep a domain."""
        if self.include and not any(re.search(p, domain) for p in self.include):
            return False
        if self._ignore_list.ignored(domain):
            return False
        return not any(re.search(p, domain) for p in self.exclude)

    def worker_settings(self) -> tuple[object, ...]:
        """What a worker is forked with: a reload that changes it replaces the workers."""
        return (self.connect, self.instances, self.refresh_interval, self.call_timeout,
                self.chunk_size, self.include, self.exclude, self.domains,
                self.ignore_selected, self.log_level, self.label_spec(), self.selection(),
                self.kernel_reader, self.prometheus is not None)

    def sampled_by(self, name: str, tag: str | None) -> Assignment | None:
        """Which instance samples this domain, and why (None: include/exclude leave it
        out). The one rule the workers and ``plan`` share."""
        return assign(tag, self.instances) if self.wants(name) else None


_KEYS = {f.name for f in fields(Config)}


def _kind(key: str, value: Any, kind: type, label: str) -> Any:
    if isinstance(value, bool) and kind is not bool:
        raise ConfigError(f"{key}: must be {label}, got a boolean")
    if kind is float and isinstance(value, int):
        try:
            value = float(value)
        except OverflowError:
            raise ConfigError(f"{key}: must be {label}, got an integer of "
                              f"{len(str(abs(value)))} digits") from None
    if not isinstance(value, kind):
        raise ConfigError(f"{key}: must be {label}, got {type(value).__name__} {value!r}")
    return value


def _bounded(key: str, value: Any, *, integer: bool = False) -> Any:
    """A number in (minimum, maximum], or [minimum, maximum] for the keys of MIN_INCLUSIVE
    and of ZERO_MEANS_NONE (0 meaning none): the bounds the README lists."""
    value = _kind(key, value, int if integer else float, "an integer" if integer else "a number")
    minimum = MIN_SECONDS.get(key, 0)
    maximum = MAX_COUNT[key] if integer else MAX_SECONDS[key]
    inclusive = key in MIN_INCLUSIVE or key in ZERO_MEANS_NONE
    least = "at least" if inclusive else "greater than"
    if (not integer and not math.isfinite(value)) or value < minimum or (
            value == minimum and not inclusive):
        raise ConfigError(f"{key}: must be {least} {minimum:g}, got {_short(value)}")
    if value > maximum:  # an int is compared as it is: no float conversion to overflow
        raise ConfigError(f"{key}: at most {maximum:.15g}, got {_short(value)}")
    return value


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}... ({len(text)} characters)"


def _strings(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    items = _kind(key, value, list, "a list of strings")
    return tuple(_kind(f"{key}[{i}]", v, str, "a string") for i, v in enumerate(items))


def parse_endpoint(text: str, key: str = "graphite") -> Endpoint:
    """``HOST:PORT`` or ``[V6]:PORT`` -> Endpoint, or ConfigError."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^\s:\[\]]+):(\d+)", text.strip())
    if not m:
        raise ConfigError(f"{key}: expected HOST:PORT, got {text!r}")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if not 0 < port < 65536:
        raise ConfigError(f"{key}: port must be 1-65535, got {port}")
    return Endpoint(host, port)


def _unique_endpoints(key: str, endpoints: tuple[Endpoint, ...]) -> tuple[Endpoint, ...]:
    """Each destination once: twice would mean two queues (and two spools on one
    directory) for one carbon."""
    seen: set[tuple[str, int]] = set()
    for ep in endpoints:
        same = (ep.host.lower(), ep.port)  # host names are case-insensitive
        if same in seen:
            raise ConfigError(f"{key}: {ep} is listed twice")
        seen.add(same)
    return endpoints


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    value = _kind(key, value, str, "a string")
    if value not in choices:
        raise ConfigError(f"{key}: must be one of {', '.join(choices)}; got {value!r}")
    return str(value)


def _fieldlist(key: str, value: Any, choices: tuple[str, ...],
               allow_empty: bool) -> tuple[str, ...]:
    items = _strings(key, value.split() if isinstance(value, str) else value)
    items = tuple(i for i in items if i != "none")
    for item in items:
        if item not in choices:
            raise ConfigError(f"{key}: unknown field {item!r}; use {', '.join(choices)}")
    if not items and not allow_empty:
        raise ConfigError(f"{key}: needs at least one of {', '.join(choices)}")
    return items


def _path_text(key: str, value: Any) -> str:
    value = _kind(key, value, str, "a string")
    if re.search(r"[^\x21-\x7e]", value):
        raise ConfigError(f"{key}: only printable ASCII without spaces is allowed, got {value!r}")
    return str(value)


def _element_path(key: str, path: str) -> str:
    """An ElementTree path relative to the metadata element, compiled once to prove it."""
    try:
        ET.Element("metadata").find(path)
    except (SyntaxError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: not a relative ElementTree path: {path!r} ({exc})") from None
    return path


def _validate_regexes(key: str, patterns: tuple[str, ...]) -> None:
    for i, pattern in enumerate(patterns):
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"{key}[{i}]: bad regular expression {pattern!r}: {exc}") from None


def _check(key: str, value: Any) -> Any:
    """Validate one key's value and return it in its Config type."""
    if key == "connect":
        uri = _kind(key, value, str, "a string")
        if not uri.strip():
            raise ConfigError("connect: must not be empty")
        return uri
    if key in MAX_COUNT:
        return _bounded(key, value, integer=True)
    if key in MAX_SECONDS:
        return _bounded(key, value)
    if key in ("include", "exclude"):
        patterns = _strings(key, value)
        _validate_regexes(key, patterns)
        return patterns
    if key == "spool_dir":
        path = _kind(key, value, str, "a string")
        if not path.strip() or "\0" in path:
            raise ConfigError("spool_dir: must be a directory path")
        return path
    if key in ("prometheus", "web_config"):
        return _prometheus_key(key, value)
    if key == "graphite":
        return _unique_endpoints(key, tuple(parse_endpoint(t, key)
                                            for t in _strings(key, value)))
    if key in _FLAGS:
        return _kind(key, value, bool, "true or false")
    if key in _CHOICES:
        return _choice(key, value.lower() if isinstance(value, str) else value,
                       _CHOICES[key])
    if key == "extra_stats":
        return _extra_stats(key, value)
    if key in ("domains", "block_devices", "interface_devices"):
        entries = _strings(key, value)
        for i, entry in enumerate(entries):  # collectd's lists: POSIX ERE, as collectd
            if (why := entry_error(entry)) is not None:
                raise ConfigError(f"{key}[{i}]: {why}")
        return entries
    if key == "hostname_metadata_xpath":
        xpath_to_path(_kind(key, value, str, "a string"))  # proves it
        return value
    if key == "log_level":
        return _choice(key, str(value).lower() if isinstance(value, str) else value, LOG_LEVELS)
    if key == "hostname_metadata_ns":
        return _kind(key, value, str, "a string")
    if key == "hostname_metadata_path":
        return _element_path(key, _kind(key, value, str, "a string"))
    if key in ("hostname", "prefix", "postfix"):
        return _path_text(key, value)
    if key == "escape_character":
        esc = _path_text(key, value)
        if len(esc) != 1 or esc == ".":
            raise ConfigError(
                f"escape_character: must be one character other than '.', got {esc!r}")
        return esc
    if key == "hostname_format":
        return _fieldlist(key, value, HOSTNAME_FIELDS, allow_empty=False)
    if key == "plugin_instance_format":
        return _fieldlist(key, value, PLUGIN_INSTANCE_FIELDS, allow_empty=True)
    raise ConfigError(f"unknown key {key!r}")  # pragma: no cover - guarded by _KEYS


def _prometheus_key(key: str, value: Any) -> Any:
    """``prometheus`` (HOST:PORT) or ``web_config`` (a file that must read well)."""
    if key == "prometheus":
        return parse_endpoint(_kind(key, value, str, "a string"), key)
    from vpartcollect.output.prometheus.webconfig import WebConfigError, load
    path = _kind(key, value, str, "a string")
    try:
        load(path)  # a bad file: one line, exit 2 (and on SIGHUP, the running one kept)
    except WebConfigError as exc:
        raise ConfigError(str(exc)) from None
    return path


def _extra_stats(key: str, value: Any) -> tuple[str, ...]:
    """collectd's ExtraStats selectors: a list, or one string of them split by blanks."""
    items = _strings(key, value.split() if isinstance(value, str) else value)
    names = tuple(dict.fromkeys(i.lower() for i in items))
    for name in names:
        if name not in EXTRA_STATS + OWN_EXTRA_STATS:
            known = ", ".join(EXTRA_STATS + OWN_EXTRA_STATS)
            raise ConfigError(f"{key}: unknown selector {name!r}; use {known}")
    if {"job_stats_completed", "job_stats_background"} <= set(names):
        raise ConfigError(f"{key}: job_stats_completed and job_stats_background exclude "
                          "each other (as in collectd)")
    if "fs_info" in names:
        raise ConfigError(f"{key}: fs_info is only ever sent as notifications by collectd; "
                          "vpartcollect writes no notifications")
    return names


def xpath_to_path(xpath: str) -> tuple[str, str | None]:
    """collectd's HostnameMetadataXPath, of the forms ``/root/a/b/text()`` and
    ``/root/a/@attr``, as (ElementTree path under the root, attribute or None)."""
    steps = xpath.strip().split("/")
    if len(steps) < 3 or steps[0] or not all(steps[1:]):
        raise ConfigError(f"hostname_metadata_xpath: expected /element/.../text() or "
                          f"/element/.../@attribute, got {xpath!r}")
    *elements, last = steps[2:]
    if not all(re.fullmatch(r"[A-Za-z_][\w.-]*", e) for e in elements):
        raise ConfigError(f"hostname_metadata_xpath: only element names between the "
                          f"slashes, got {xpath!r}")
    path = "/".join(elements) or "."
    if last == "text()":
        return path, None
    if last.startswith("@") and re.fullmatch(r"@[A-Za-z_][\w.-]*", last):
        return path, last[1:]
    if re.fullmatch(r"[A-Za-z_][\w.-]*", last):  # an element: its text
        return "/".join([*elements, last]), None
    raise ConfigError(f"hostname_metadata_xpath: expected it to end in text() or "
                      f"@attribute, got {xpath!r}")


def read_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file into a dict, or ConfigError."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path}: not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: not valid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses once per nested array or table
        raise ConfigError(f"config file {path}: not valid TOML: nested too deeply") from None


def build(file_values: dict[str, Any] | None = None,
          overrides: dict[str, Any] | None = None) -> Config:
    """Merge file values and CLI overrides (None means 'not given') into a Config."""
    merged: dict[str, Any] = {}
    for source in (file_values or {}, overrides or {}):
        for key, value in source.items():
            if value is None:
                continue
            norm = key.replace("-", "_")
            if norm not in _KEYS:
                raise ConfigError(f"unknown key {key!r}")
            merged[norm] = _check(norm, value)
    cfg = Config(**merged)
    if cfg.timeout is not None and cfg.timeout >= cfg.interval:
        raise ConfigError(f"timeout: must be less than interval ({cfg.interval:g} s), got "
                          f"{cfg.timeout:g}: a call allowed to outlast the interval makes "
                          "every sample behind it late")
    return cfg


def load(path: str | Path | None, overrides: dict[str, Any] | None = None,
         defaults: dict[str, Any] | None = None) -> Config:
    """Read ``path`` (if any) and apply ``overrides``; ``defaults`` fill only keys that
    neither sets (the environment's say, e.g. systemd's state directory)."""
    values = read_file(path) if path else {}
    given = {k.replace("-", "_") for k in values} | {
        k.replace("-", "_") for k, v in (overrides or {}).items() if v is not None}
    extra = {k: v for k, v in (defaults or {}).items() if k not in given}
    return build({**extra, **values}, overrides)
