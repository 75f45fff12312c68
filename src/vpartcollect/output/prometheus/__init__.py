"""The Prometheus endpoint: each domain's last complete sample, served by a process of its own.

families.py maps samples to metric families (pure), board.py keeps the last sample
of every domain, webconfig.py reads exporter-toolkit's web configuration,
server.py is the exporter process (HTTP), channel.py its supervisor-side end.
"""
