"""What collectd asks of a domain besides the bulk statistics, as raw keys beside them.

- Per-domain calls, only when an ExtraStats selector wants them: ``vcpupin`` (each
  vCPU's cpu affinity, virDomainGetVcpus), ``disk_err`` (virDomainGetDiskErrors),
  ``job_stats_completed``/``job_stats_background`` (virDomainGetJobStats). The first
  two read libvirtd's own state (no monitor); job stats only for healthy domains.
- What the domain XML says of its devices, for collectd's device names and filters:
  a disk's source (file or device), an interface's MAC address and its number.
"""

from __future__ import annotations

import logging
from typing import Any

import libvirt

from vpartcollect.samples import Stats
from vpartcollect.worker.inventory import Domain

log = logging.getLogger(__name__)

PER_DOMAIN = ("vcpupin", "disk_err", "job_stats_completed", "job_stats_background")
QEMU_FREE = ("vcpupin", "disk_err")  # answered without the monitor: asked of frozen QEMUs too


def add_calls(dom: Domain, stats: Stats, wanted: frozenset[str],
              unsupported: set[str]) -> None:
    """Ask ``dom`` what the selectors in ``wanted`` need; remember calls the driver
    refuses in ``unsupported`` (never asked again, as collectd disables the selector)."""
    h: Any = dom.handle
    if "vcpupin" in wanted and "vcpupin" not in unsupported:
        maps = _call(h.vcpus, unsupported, "vcpupin")
        if maps:
            for vcpu, cpus in enumerate(maps[1]):
                for cpu, usable in enumerate(cpus):
                    stats[f"vcpu.{vcpu}.pin.{cpu}"] = int(bool(usable))
    if "disk_err" in wanted and "disk_err" not in unsupported:
        errors = _call(h.diskErrors, unsupported, "disk_err") or {}
        for disk, code in errors.items():
            stats[f"disk_error.{disk}"] = int(code)
    for selector, flags in (("job_stats_completed", libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED),
                            ("job_stats_background", 0)):
        if selector in wanted and selector not in unsupported:
            job = _call(lambda f=flags: h.jobStats(f), unsupported, selector) or {}
            for field, value in job.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    stats[f"job.{field}"] = value


def _call(fn: Any, unsupported: set[str], selector: str) -> Any:
    try:
        return fn()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() in (libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_INVALID_ARG):
            log.warning("ExtraStats %s: not supported by this driver (%s); not asked again",
                        selector, exc.get_error_message())
            unsupported.add(selector)
            return None
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            raise
        log.debug("%s: %s failed: %s", dom_name(fn), selector, exc)
        return None


def dom_name(fn: Any) -> str:
    """The domain a bound libvirt method belongs to, for a log line."""
    try:
        return str(fn.__self__.name())
    except (AttributeError, libvirt.libvirtError):
        return "?"


def describe_devices(dom: Domain, stats: Stats) -> None:
    """Add what the XML says of the devices the stats name: ``block.N.source`` (the disk's
    source file or device, collectd's BlockDeviceFormat source), ``net.N.mac`` and
    ``net.N.number`` (InterfaceFormat address and number)."""
    count = stats.get("block.count")
    for i in range(count if type(count) is int else 0):
        target, path = stats.get(f"block.{i}.name"), stats.get(f"block.{i}.path")
        path = path if isinstance(path, str) else ""
        if isinstance(target, str) and target in dom.plain_sources:
            stats[f"block.{i}.source"] = path or dom.plain_sources[target]
        elif path.startswith("/"):  # a disk plugged since the XML was read: a local image
            stats[f"block.{i}.source"] = path
    nets = stats.get("net.count")
    for i in range(nets if type(nets) is int else 0):
        name = stats.get(f"net.{i}.name")
        if isinstance(name, str) and name in dom.macs:
            mac = dom.macs[name]
            if mac:
                stats[f"net.{i}.mac"] = mac
            stats[f"net.{i}.number"] = list(dom.macs).index(name) + 1
