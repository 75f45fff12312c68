"""``vpartcollect import-collectd``: a collectd.conf's virt and write_graphite setup as ours.

Takes the global ``Hostname``, ``FQDNLookup`` and ``Interval``, the ``virt``
plugin's ``Interval`` (from its ``<LoadPlugin>`` block), ``<Plugin virt>`` and each
``<Node>`` of ``<Plugin write_graphite>``, and returns our TOML and one note for
every option it cannot carry, saying what happens instead. An option collectd
itself would refuse (an unknown key, a bad value) makes the import fail, as it
makes collectd fail. Pure but for the FQDN lookup collectd would do at start.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vpartcollect.collectd_conf import CollectdConfError, Item, Value
from vpartcollect.collectd_values import EXTRA_STATS, entry_error

_VIRT_OPTIONS = {
    "connection": "connect", "refreshinterval": "refresh_interval", "instances": "instances",
    "hostnameformat": "hostname_format", "plugininstanceformat": "plugin_instance_format",
    "hostnamemetadatans": "hostname_metadata_ns",
    "hostnamemetadataxpath": "hostname_metadata_xpath",
    "interfaceformat": "interface_format", "blockdeviceformat": "block_device_format",
    "blockdeviceformatbasename": "block_device_format_basename",
    "ignoreselected": "ignore_selected", "reportblockdevices": "report_block_devices",
    "reportnetworkinterfaces": "report_network_interfaces",
}
_VIRT_LISTS = {"domain": "domains", "blockdevice": "block_devices",
               "interfacedevice": "interface_devices"}
_BOOLEANS = {"blockdeviceformatbasename", "ignoreselected", "reportblockdevices",
             "reportnetworkinterfaces"}
_NODE_NAMING = {"prefix": "prefix", "postfix": "postfix", "storerates": "store_rates",
                "separateinstances": "separate_instances", "alwaysappendds": "always_append_ds",
                "preserveseparator": "preserve_separator",
                "dropduplicatefields": "drop_duplicate_fields", "reversehost": "reverse_host",
                "escapecharacter": "escape_character"}
_NODE_FLAGS = {"storerates", "separateinstances", "alwaysappendds", "preserveseparator",
               "dropduplicatefields", "reversehost", "usetags", "logsenderrors"}


@dataclass
class Imported:
    """Our configuration keys, and what could not be carried."""

    values: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _one(item: Item) -> Value:
    if len(item.values) != 1:
        raise CollectdConfError(f"{item.where}: {item.key} takes one value")
    return item.values[0]


def _string(item: Item) -> str:
    value = _one(item)
    if isinstance(value, bool):
        raise CollectdConfError(f"{item.where}: {item.key} needs a string, got a boolean")
    if isinstance(value, float) and not math.isfinite(value):
        raise CollectdConfError(f"{item.where}: {item.key} needs a string, got a number "
                                "beyond a double's range")
    return value if isinstance(value, str) else _number_text(value)


def _number_text(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


def _boolean(item: Item) -> bool:
    value = _one(item)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "on", "false", "no", "off"):
        return value.lower() in ("true", "yes", "on")
    raise CollectdConfError(f"{item.where}: {item.key} needs true or false, got {value!r}")


def _number(item: Item) -> float:
    """A finite number: collectd's options that take one refuse a word such as ``nan``,
    and a number beyond a double's range (``1.0e+400``, a long ``0xfff...``) is
    infinite to its strtod."""
    value = _one(item)
    if isinstance(value, bool):
        raise CollectdConfError(f"{item.where}: {item.key} needs a number, got a boolean")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise CollectdConfError(f"{item.where}: {item.key} needs a number, "
                                    f"got {_short(value)}") from None
    if not math.isfinite(value):
        raise CollectdConfError(f"{item.where}: {item.key} needs a finite number, "
                                f"got {_short(_one(item))}")
    return value


def _short(value: Value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:30]}... ({len(text)} characters)"


def import_collectd(root: Item, fqdn: Callable[[], str] = socket.getfqdn) -> Imported:
    """Our configuration for the collectd configuration ``root`` (Includes followed)."""
    out = Imported()
    loaded = {str(v).lower() for i in root.find("LoadPlugin") for v in i.values}
    _globals(root, out, fqdn)
    # Every <Plugin> block counts, in the order read (Includes followed): collectd
    # hands each one to the plugin, so two write_graphite blocks are two sets of nodes.
    plugins: dict[str, list[Item]] = {}
    for block in root.find("Plugin"):
        if block.values:
            plugins.setdefault(str(block.values[0]).lower(), []).append(block)
    others = sorted((loaded | set(plugins)) - {"virt", "write_graphite"})
    if others:
        out.notes.append(f"plugins {', '.join(others)}: not about libvirt domains or "
                         "Graphite; left out")
    if "virt" not in loaded:
        out.notes.append("LoadPlugin virt: missing (collectd would not sample domains); "
                         "the <Plugin virt> options are taken all the same")
    for block in plugins.get("virt", []):
        _virt(block, out)
    _graphite(plugins.get("write_graphite", []), out)
    if not out.values.get("graphite"):
        out.notes.append("no write_graphite node: metrics go to stdout")
    return out


def _globals(root: Item, out: Imported, fqdn: Callable[[], str]) -> None:
    hostname = next((_string(i) for i in root.find("Hostname")), None)
    lookup = next((_boolean(i) for i in root.find("FQDNLookup")), True)
    if hostname is not None:
        out.values["hostname"] = hostname
    elif lookup:
        out.values["hostname"] = fqdn()
        out.notes.append(f"FQDNLookup: this host's name looked up now "
                         f"({out.values['hostname']}), not at every start")
    interval = next((_number(i) for i in root.find("Interval")), None)
    for block in root.find("LoadPlugin"):
        if block.values and str(block.values[0]).lower() == "virt":
            interval = next((_number(i) for i in block.find("Interval")), interval)
    if interval is not None:
        out.values["interval"] = interval


def _virt(block: Item, out: Imported) -> None:
    v = out.values
    for item in block.children:
        key = item.key.lower()
        if key in _VIRT_LISTS:
            v.setdefault(_VIRT_LISTS[key], []).append(_list_entry(item))
        elif key in _BOOLEANS:
            v[_VIRT_OPTIONS[key]] = _boolean(item)
        elif key in ("hostnameformat", "plugininstanceformat"):
            fields = [str(x).lower() for x in item.values]
            v[_VIRT_OPTIONS[key]] = [f for f in fields if f != "none"]
        elif key in ("interfaceformat", "blockdeviceformat"):
            v[_VIRT_OPTIONS[key]] = _string(item).lower()
        elif key == "instances":
            v["instances"] = int(_number(item))
        elif key == "refreshinterval":
            _refresh(item, out)
        elif key in ("connection", "hostnamemetadatans", "hostnamemetadataxpath"):
            v[_VIRT_OPTIONS[key]] = _string(item)
        elif key == "extrastats":
            _extra_stats(item, out)
        elif key == "persistentnotification":
            out.notes.append(f"{item.where}: PersistentNotification: vpartcollect sends no "
                             "notifications; a domain's state is the value domain_state "
                             "(ExtraStats domain_state)")
        else:
            raise CollectdConfError(f"{item.where}: virt: unknown option {item.key!r} "
                                    "(collectd refuses it too)")


def _list_entry(item: Item) -> str:
    """A Domain / BlockDevice / InterfaceDevice entry; a ``/regex/`` one must be a POSIX
    extended regular expression we can read as collectd does (ere.py)."""
    entry = _string(item)
    if (why := entry_error(entry)) is not None:
        raise CollectdConfError(f"{item.where}: {item.key}: {why}")
    return entry


def _refresh(item: Item, out: Imported) -> None:
    seconds = _number(item)
    if seconds <= 0:
        out.notes.append(f"{item.where}: RefreshInterval {seconds:g}: collectd then never "
                         "reads tags and devices again; vpartcollect reads them daily")
        seconds = 86400
    out.values["refresh_interval"] = seconds


def _extra_stats(item: Item, out: Imported) -> None:
    names = [n.lower() for n in _string(item).split()]
    unknown = [n for n in names if n not in EXTRA_STATS]
    if unknown:
        raise CollectdConfError(f"{item.where}: ExtraStats: unknown selector {unknown[0]!r} "
                                "(collectd refuses it too)")
    if "fs_info" in names:
        out.notes.append(f"{item.where}: ExtraStats fs_info: collectd sends file system "
                         "information as notifications only; vpartcollect writes none")
    if {"job_stats_completed", "job_stats_background"} & set(names):
        out.notes.append(f"{item.where}: ExtraStats job_stats: the string fields of job "
                         "statistics are notifications in collectd; only the numbers are "
                         "written")
    out.values["extra_stats"] = [n for n in dict.fromkeys(names) if n != "fs_info"]


def _graphite(blocks: list[Item], out: Imported) -> None:
    """The nodes of every write_graphite block, as collectd registers them: one writer
    per node, named ``write_graphite/<Node name>``; a later node of the same name
    replaces the earlier one (collectd warns "overwriting the old entry")."""
    nodes: dict[str, tuple[Item, dict[str, Any], str]] = {}
    for block in blocks:
        for node in block.children:
            if node.key.lower() not in ("node", "carbon"):
                raise CollectdConfError(f"{node.where}: write_graphite: unknown option "
                                        f"{node.key!r} (collectd refuses it too)")
            naming, endpoint = _node(node, out)
            name = _callback_name(node, endpoint)
            if name in nodes:
                out.notes.append(f"{node.where}: node {name} again: collectd replaces the "
                                 f"one at {nodes[name][0].where} with it; so does the import")
            nodes[name] = (node, naming, endpoint)
    first: tuple[str, dict[str, Any]] | None = None
    for name, (node, naming, endpoint) in nodes.items():
        destinations = out.values.setdefault("graphite", [])
        if endpoint in destinations:
            out.notes.append(f"{node.where}: node {name}: {endpoint} is already a "
                             "destination; collectd would send every line there twice, "
                             "vpartcollect once")
        else:
            destinations.append(endpoint)
        if first is None:
            first = name, naming
            out.values.update(naming)
            continue
        first_name, first_naming = first
        for key in sorted(set(first_naming) | set(naming)):
            if first_naming.get(key, _DEFAULTS[key]) != naming.get(key, _DEFAULTS[key]):
                out.notes.append(f"{node.where}: node {name}: {key} differs from node "
                                 f"{first_name}'s; vpartcollect names paths alike for every "
                                 f"destination: {first_name}'s")


def _callback_name(node: Item, endpoint: str) -> str:
    """What collectd names a node's writer by: the Node's name; the legacy <Carbon>
    block's host, port and protocol."""
    return f"<Carbon> {endpoint}" if node.key.lower() == "carbon" else _string(node)


_DEFAULTS: dict[str, Any] = {"prefix": "", "postfix": "", "store_rates": True,
                             "separate_instances": False, "always_append_ds": False,
                             "preserve_separator": False, "drop_duplicate_fields": False,
                             "reverse_host": False, "escape_character": "_"}


def _node(node: Item, out: Imported) -> tuple[dict[str, Any], str]:
    host, port = "localhost", "2003"
    naming: dict[str, Any] = {}
    for item in node.children:
        key = item.key.lower()
        if key == "host":
            host = _string(item)
        elif key == "port":
            port = _string(item)
        elif key == "protocol":
            if _string(item).lower() == "udp":
                out.notes.append(f"{item.where}: Protocol udp: vpartcollect writes to "
                                 "carbon over TCP only; this destination gets TCP")
            elif _string(item).lower() != "tcp":
                raise CollectdConfError(f"{item.where}: Protocol must be tcp or udp")
        elif key == "usetags":
            if _boolean(item):
                out.notes.append(f"{item.where}: UseTags: vpartcollect writes plain paths, "
                                 "not tagged series")
        elif key in ("reconnectinterval", "logsenderrors"):
            out.notes.append(f"{item.where}: {item.key}: vpartcollect reconnects with backoff "
                             "(within a second) and logs a lost connection once; not carried")
        elif key in _NODE_NAMING:
            naming[_NODE_NAMING[key]] = _boolean(item) if key in _NODE_FLAGS else \
                _string(item)
        else:
            raise CollectdConfError(f"{item.where}: write_graphite: unknown option "
                                    f"{item.key!r} (collectd refuses it too)")
    if "escape_character" in naming:
        naming["escape_character"] = naming["escape_character"][:1]
    if not port.isdigit():
        try:
            port = str(socket.getservbyname(port, "tcp"))
        except OSError:
            raise CollectdConfError(f"{node.where}: Port {port!r} is no port number or "
                                    "known service") from None
    return naming, f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def to_toml(values: dict[str, Any]) -> str:
    """Our configuration file for ``values`` (the few types our keys have)."""
    lines = ["# Made by vpartcollect import-collectd from a collectd.conf."]
    for key, value in values.items():
        lines.append(f"{key} = {_toml(value)}")
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CollectdConfError(f"not a finite number: {value!r}")
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return _toml_string(str(value))


def _toml_string(text: str) -> str:
    """A TOML basic string holding exactly ``text``: what is not printable escaped,
    as \\uXXXX, or \\UXXXXXXXX beyond U+FFFF (\\u takes four digits only)."""
    out = ['"']
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif c.isprintable():
            out.append(c)
        else:
            out.append(f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}")
    return "".join(out) + '"'
