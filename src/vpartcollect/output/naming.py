"""Metric paths as collectd's virt plugin names its values and write_graphite writes them. Pure.

A collectd value is (host, plugin, plugin instance, type, type instance, data
source). write_graphite escapes each part ('.' unless PreserveSeparator,
blanks, control characters), joins them as
``<prefix><host><postfix>.<plugin>[-<plugin instance>].<type>[-<type instance>][.<ds>]``
(``.`` instead of ``-`` with SeparateInstances; the data source name for types
with several, or always with AlwaysAppendDS; DropDuplicateFields drops a type
equal to its plugin), then escapes ``\\t "\\:!,/()`` over the whole path. Unlike
collectd, every non-ASCII character is escaped too: no name can add a level or
a line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PLUGIN = "virt"
HOSTNAME_FIELDS = ("name", "uuid", "hostname", "metadata")
PLUGIN_INSTANCE_FIELDS = ("name", "uuid", "metadata")

_PART = re.compile(r"[^\x21-\x7e]|[\"\\:!,/()]")  # blanks, control, non-ASCII, forbidden
_PART_DOTS = re.compile(r"[^\x21-\x7e]|[.\"\\:!,/()]")
_WHOLE = re.compile(r"[ \t\"\\:!,/()\n\r]")  # write_graphite's pass over the whole path


def escape_part(text: str, escape: str = "_", preserve_separator: bool = False) -> str:
    """One path component made safe: every separator (unless preserved), blank, control,
    non-ASCII or forbidden character becomes ``escape``."""
    return (_PART if preserve_separator else _PART_DOTS).sub(escape, text)


def escape_path(text: str, escape: str = "_") -> str:
    """write_graphite's last pass, over what is not a part (prefix and postfix)."""
    return _WHOLE.sub(escape, text)


def reverse_host(host: str) -> str:
    """write_graphite's ReverseHost: ``a.b.c`` -> ``c.b.a``."""
    return ".".join(reversed(host.split(".")))


@dataclass(frozen=True)
class Naming:
    """How paths are built; defaults are collectd's virt and write_graphite defaults."""

    prefix: str = ""
    postfix: str = ""
    escape: str = "_"
    hostname: str = "localhost"
    hostname_format: tuple[str, ...] = ("name",)
    plugin_instance_format: tuple[str, ...] = ()
    separate_instances: bool = False
    always_append_ds: bool = False
    drop_duplicate_fields: bool = False
    preserve_separator: bool = False
    reverse_host: bool = False

    def _fields(self, fields: tuple[str, ...], name: str, uuid: str,
                label: str | None = None) -> str:
        # "metadata" falls back to the name for a domain that has no such value.
        parts = {"name": name, "uuid": uuid, "hostname": self.hostname,
                 "metadata": label or name}
        # collectd joins several fields with ':', which write_graphite then escapes.
        return ":".join(parts[f] for f in fields)

    def _part(self, text: str) -> str:
        return escape_part(text, self.escape, self.preserve_separator)

    def _host(self, host: str) -> str:
        host = reverse_host(host) if self.reverse_host else host
        head = escape_path(self.prefix, self.escape)
        return f"{head}{self._part(host)}{escape_path(self.postfix, self.escape)}"

    def host(self, name: str, uuid: str, label: str | None = None) -> str:
        """A domain's host field, as HostnameFormat makes it (not escaped nor reversed)."""
        return self._fields(self.hostname_format, name, uuid, label)

    def plugin_instance(self, name: str, uuid: str, label: str | None = None) -> str:
        """A domain's plugin instance, as PluginInstanceFormat makes it (not escaped)."""
        if not self.plugin_instance_format:
            return ""
        return self._fields(self.plugin_instance_format, name, uuid, label)

    def domain_prefix(self, name: str, uuid: str, label: str | None = None) -> str:
        """``<prefix><host><postfix>.virt[-<plugin_instance>].`` for one domain."""
        host = self._host(self.host(name, uuid, label))
        return f"{host}.{self._plugin(PLUGIN, self.plugin_instance(name, uuid, label))}."

    def _plugin(self, plugin: str, instance: str) -> str:
        if not instance:
            return self._part(plugin)
        sep = "." if self.separate_instances else "-"
        return f"{self._part(plugin)}{sep}{self._part(instance)}"

    def value_suffix(self, plugin: str, type_: str, type_instance: str, ds: str,
                     several_ds: bool, plugin_instance: str = "") -> str:
        """``<type>[-<type_instance>][.<ds>]``, as write_graphite follows the plugin part
        (``plugin``/``plugin_instance``: to see whether DropDuplicateFields applies)."""
        sep = "." if self.separate_instances else "-"
        name = self._part(type_)
        if type_instance:
            if self.drop_duplicate_fields and self._part(plugin) == name:
                name = self._part(type_instance)
            else:
                name = f"{name}{sep}{self._part(type_instance)}"
        if several_ds or self.always_append_ds:
            if self.drop_duplicate_fields and self._plugin(plugin, plugin_instance) == name:
                return ds
            return f"{name}.{ds}"
        return name

    def self_path(self, instance: int | None, metric: str) -> str:
        """Path of one of the collector's own metrics (per instance, or global): plugin
        ``vpartcollect``, plugin instance ``virt-N``, the metric as a single-value type."""
        host = self._host(self.hostname)
        plugin_instance = "" if instance is None else f"virt-{instance}"
        plugin = self._plugin("vpartcollect", plugin_instance)
        suffix = self.value_suffix("vpartcollect", metric, "", "value", False, plugin_instance)
        return f"{host}.{plugin}.{suffix}"
