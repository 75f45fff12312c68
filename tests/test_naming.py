"""Paths as write_graphite writes them, for each of its path options (collectd 5.12's
format_graphite.c is the oracle: the expected paths are what its rules give)."""

from __future__ import annotations

from typing import Any

import pytest

from vpartcollect.output.naming import Naming


def path(naming: Naming, type_: str, inst: str = "", ds: str = "value", several: bool = False,
         name: str = "lab-7", plugin: str = "virt") -> str:
    instance = naming.plugin_instance(name, "u-1")
    return naming.domain_prefix(name, "u-1") + naming.value_suffix(plugin, type_, inst, ds,
                                                                   several, instance)


@pytest.mark.parametrize(("options", "expected"), [
    ({}, ["lab-7.virt.virt_cpu_total", "lab-7.virt.memory-total",
          "lab-7.virt.disk_octets-vda.read"]),
    ({"always_append_ds": True}, ["lab-7.virt.virt_cpu_total.value",
                                  "lab-7.virt.memory-total.value",
                                  "lab-7.virt.disk_octets-vda.read"]),
    ({"separate_instances": True}, ["lab-7.virt.virt_cpu_total", "lab-7.virt.memory.total",
                                    "lab-7.virt.disk_octets.vda.read"]),
    ({"prefix": "collectd.", "separate_instances": True, "always_append_ds": True},
     ["collectd.lab-7.virt.virt_cpu_total.value", "collectd.lab-7.virt.memory.total.value",
      "collectd.lab-7.virt.disk_octets.vda.read"]),
    ({"plugin_instance_format": ("uuid",), "separate_instances": True},
     ["lab-7.virt.u-1.virt_cpu_total", "lab-7.virt.u-1.memory.total",
      "lab-7.virt.u-1.disk_octets.vda.read"]),
])
def test_write_graphite_options(options: dict[str, Any], expected: list[str]) -> None:
    naming = Naming(**options)
    got = [path(naming, "virt_cpu_total"), path(naming, "memory", "total"),
           path(naming, "disk_octets", "vda", "read", several=True)]
    assert got == expected


def test_preserve_separator_keeps_dots_in_names() -> None:
    assert path(Naming(), "memory", "total", name="web.example.com") == \
        "web_example_com.virt.memory-total"
    assert path(Naming(preserve_separator=True), "memory", "total", name="web.example.com") == \
        "web.example.com.virt.memory-total"


def test_drop_duplicate_fields_as_format_graphite_does() -> None:
    """No virt type equals its plugin; format_graphite's rule, on a plugin whose does."""
    drop = Naming(drop_duplicate_fields=True, hostname_format=("hostname",), hostname="h")
    assert path(drop, "cpu", "user", plugin="cpu") == "h.virt.user"
    assert path(drop, "cpu", plugin="cpu") == "h.virt.cpu"  # no ds: no dropping
    assert Naming(drop_duplicate_fields=True, always_append_ds=True).value_suffix(
        "cpu", "cpu", "", "value", False) == "value"
    assert path(drop, "virt_cpu_total") == "h.virt.virt_cpu_total"


def test_reverse_host() -> None:
    naming = Naming(hostname_format=("hostname",), hostname="hv01.example.com",
                    reverse_host=True)
    assert path(naming, "virt_cpu_total") == "com_example_hv01.virt.virt_cpu_total"
    keep = Naming(hostname_format=("hostname",), hostname="hv01.example.com",
                  reverse_host=True, preserve_separator=True)
    assert path(keep, "virt_cpu_total") == "com.example.hv01.virt.virt_cpu_total"


def test_self_metrics_follow_the_same_rules() -> None:
    assert Naming(hostname="hv").self_path(2, "domains") == "hv.vpartcollect-virt-2.domains"
    assert Naming(hostname="hv", separate_instances=True, always_append_ds=True).self_path(
        None, "tracked_domains") == "hv.vpartcollect.tracked_domains.value"
