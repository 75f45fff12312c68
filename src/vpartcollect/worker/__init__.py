"""The child side of an instance: one forked process per ``virt-N`` (see main.py)."""

from vpartcollect.worker.main import worker_main

__all__ = ["worker_main"]
