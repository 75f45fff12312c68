"""Command line: parse, call, map failures to one line and an exit status.

Exit status: 0 success, 1 runtime failure, 2 bad configuration or unusable libvirt URI.
"""

from __future__ import annotations

import json
import os
import sys
import tomllib
from collections.abc import Callable
from typing import Any

import click

from vpartcollect import __version__
from vpartcollect import config as config_mod
from vpartcollect.collectd_conf import CollectdConfError
from vpartcollect.config import Config, ConfigError
from vpartcollect.daemon import setup_logging
from vpartcollect.planning import PlanRow, plan_rows, render_plan
from vpartcollect.preflight import PreflightError, preflight
from vpartcollect.tagging import TagCommandError

EXIT_CONFIG = 2


def _common(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Options every command shares: where the config is and how to reach libvirt."""
    options = [
        click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False),
                     help="TOML configuration file."),
        click.option("--connect", metavar="URI", help="libvirt URI (default qemu:///system)."),
        click.option("--instances", type=int, help="Number of virt-N partitions (default 1)."),
        click.option("--include", multiple=True, metavar="REGEX",
                     help="Only domains whose name matches (repeatable)."),
        click.option("--exclude", multiple=True, metavar="REGEX",
                     help="Skip domains whose name matches (repeatable)."),
        click.option("--log-level", type=click.Choice(config_mod.LOG_LEVELS),
                     help="Log verbosity on stderr (default info)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _load(config_path: str | None, **flags: Any) -> Config:
    overrides = {k: (list(v) if isinstance(v, tuple) else v) for k, v in flags.items()}
    overrides = {k: v for k, v in overrides.items() if v is not None and v != []}
    # Under systemd (StateDirectory=), the state directory is where the spool lives
    # unless the file or a flag says otherwise.
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    cfg = config_mod.load(config_path, overrides,
                          {"spool_dir": f"{state}/spool"} if state else None)
    setup_logging(cfg.log_level)
    return cfg


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="vpartcollect",
                      message="%(prog)s %(version)s")
def cli() -> None:
    """Partitioned libvirt statistics collector (collectd virt compatible)."""


@cli.command()
@_common
@click.option("--interval", type=float, metavar="SECONDS", help="Sampling interval (default 10).")
@click.option("--refresh-interval", type=float, metavar="SECONDS",
              help="How often domain tags are re-read (default 60).")
@click.option("--timeout", type=float, metavar="SECONDS",
              help="Deadline of one libvirt call before per-domain slack "
                   "(default min(5, interval/2)).")
@click.option("--chunk-size", type=int, metavar="N",
              help="Domains per bulk stats call, each with its own deadline (default 32).")
@click.option("--hostname", help="Host name for the collector's own metrics.")
@click.option("--graphite", multiple=True, metavar="HOST:PORT",
              help="Send to this carbon plaintext listener (repeatable).")
@click.option("--stdout/--no-stdout", default=None,
              help="Write metrics to stdout (default: when no --graphite or --prometheus).")
@click.option("--format", "format_", type=click.Choice(config_mod.FORMATS),
              help="stdout format (default graphite).")
@click.option("--extra-stats", metavar="SELECTORS",
              help="collectd's ExtraStats: more values, e.g. \"disk domain_state vcpu\" "
                   "(default none: collectd's default values).")
@click.option("--kernel-reader/--no-kernel-reader", default=None,
              help="Read cpu, vCPU and interface counters of local QEMU domains from the "
                   "kernel instead of asking libvirtd (default on; needs root).")
@click.option("--spool-dir", metavar="DIR",
              help="Keep Graphite lines carbon cannot take now in DIR (default: "
                   "$STATE_DIRECTORY/spool under systemd, else memory only).")
@click.option("--prometheus", metavar="HOST:PORT",
              help="Serve each domain's last sample to Prometheus at http://HOST:PORT/metrics "
                   "(default off).")
@click.option("--web-config", metavar="FILE",
              help="exporter-toolkit web configuration (TLS, basic auth) for --prometheus.")
@click.option("--prometheus-timestamps/--no-prometheus-timestamps", default=None,
              help="Stamp each Prometheus series with its sample's tick (default off).")
@click.option("--once", is_flag=True, help="Take one sample, write it, exit.")
def run(config_path: str | None, once: bool, format_: str | None, **flags: Any) -> int:
    """Collect statistics until SIGTERM/SIGINT (or once)."""
    from vpartcollect.supervisor import Supervisor

    cfg = _load(config_path, format=format_, **flags)
    _std_fds_or_fail(cfg)
    preflight(cfg)
    # SIGHUP re-reads the file; the command line still wins over it.
    return Supervisor(cfg, once=once,
                      reload=lambda: _load(config_path, format=format_, **flags)).run()


def _std_fds_or_fail(cfg: Config) -> None:
    """Point closed stdin/stdout/stderr at /dev/null (so no pipe or socket lands on them);
    a closed stdout with nothing else to write to is a configuration error."""
    stdout_closed = False
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            stdout_closed |= fd == 1
            devnull = os.open(os.devnull, os.O_RDWR)
            if devnull != fd:
                os.dup2(devnull, fd)
                os.close(devnull)
    if stdout_closed and cfg.use_stdout:
        raise ConfigError("stdout is closed and metrics go to stdout: give --graphite "
                          "HOST:PORT (and --no-stdout), or run with an open stdout")


@cli.command()
@_common
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of a table.")
def plan(config_path: str | None, as_json: bool, **flags: Any) -> int:
    """Show which instance samples which domain, and why."""
    cfg = _load(config_path, **flags)
    rows: list[PlanRow] = plan_rows(cfg)
    if as_json:
        click.echo(json.dumps([row.as_dict() for row in rows], indent=2))
    else:
        click.echo(render_plan(rows), nl=False)
    return 0


@cli.command("check-config")
@_common
def check_config(config_path: str | None, **flags: Any) -> int:
    """Validate the configuration (and that libvirt answers); exit 0 or 2."""
    cfg = _load(config_path, **flags)
    preflight(cfg, create=False)  # what run checks, nothing made
    click.echo(f"configuration OK: {cfg.instances} instance(s), {cfg.connect}")
    return 0


@cli.command()
@click.option("--connect", metavar="URI",
              help="libvirt URI, read-write: tags are written (default qemu:///system).")
@click.option("--clear", is_flag=True, help="Remove the domain's tag.")
@click.option("--auto", "auto", is_flag=True,
              help="Propose tags so domains sharing a storage backend share a partition.")
@click.option("--instances", type=int, default=None, help="Partitions for --auto.")
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False),
              help="TOML configuration file (for connect and instances).")
@click.option("--apply", is_flag=True, help="With --auto: write the proposed tags.")
@click.argument("domain", required=False)
@click.argument("tag", required=False)
def tag(connect: str | None, clear: bool, auto: bool, instances: int | None,
        config_path: str | None, apply: bool, domain: str | None, tag: str | None) -> int:
    """Set a domain's tag (DOMAIN virt-N), clear it (--clear DOMAIN), or plan them (--auto)."""
    from vpartcollect import tagging

    cfg = _load(config_path, connect=connect, instances=instances)
    # Least privilege: only writing a tag needs a read-write connection.
    conn = tagging.open_conn(cfg.connect, write=apply or not auto)
    try:
        if auto:
            if domain or tag or clear:
                raise click.UsageError("--auto takes no DOMAIN, TAG or --clear")
            rows = tagging.auto_proposals(conn, cfg.instances)
            click.echo(tagging.render_proposals(rows), nl=False)
            if not apply:
                click.echo("dry run: nothing written (add --apply to write these tags)")
                return 0
            changed = [p for p, current in rows if current != p.tag]
            for proposal in changed:
                tagging.set_tag(conn, proposal.domain, proposal.tag)
            click.echo(f"tagged {len(changed)} domain(s); {len(rows) - len(changed)} unchanged")
            return 0
        if apply:
            raise click.UsageError("--apply goes with --auto")
        if not domain or (clear == bool(tag)):
            raise click.UsageError("give DOMAIN and a tag, or --clear DOMAIN, or --auto")
        tagging.set_tag(conn, domain, None if clear else tag)
        click.echo(f"{domain}: {'tag cleared' if clear else f'tagged {tag}'}")
        return 0
    finally:
        conn.close()


@cli.command("import-collectd")
@click.argument("collectd_conf", type=click.Path(dir_okay=False))
def import_collectd(collectd_conf: str) -> int:
    """Print our configuration for a collectd.conf's virt and write_graphite setup."""
    from vpartcollect import collectd_conf as conf_mod
    from vpartcollect.collectd_import import import_collectd as convert
    from vpartcollect.collectd_import import to_toml

    imported = convert(conf_mod.read(collectd_conf))
    text = to_toml(imported.values)
    config_mod.build(tomllib.loads(text))  # what we print must load
    for note in imported.notes:
        click.echo(f"import-collectd: {note}", err=True)
    click.echo(text, nl=False)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point: every failure becomes one line on stderr and an exit status."""
    try:
        result = cli.main(args=argv, prog_name="vpartcollect", standalone_mode=False)
    except (ConfigError, PreflightError, TagCommandError, CollectdConfError) as exc:
        click.echo(f"vpartcollect: error: {exc}", err=True)
        return EXIT_CONFIG
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"vpartcollect: error: {exc.format_message()}", err=True)
        return EXIT_CONFIG
    except (click.exceptions.Abort, KeyboardInterrupt):
        return 1
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
