"""vpartcollect: partitioned libvirt statistics collector that keeps working when VMs hang."""

__version__ = "0.1.0"
