"""What ships beside the code stays true to it: one version everywhere, a man page that
names every command and option, an example configuration whose every key is real."""

from __future__ import annotations

import configparser
import re
import tomllib
from pathlib import Path

import click
from runner import cli

import vpartcollect
from vpartcollect import config as config_mod
from vpartcollect.cli import cli as cli_group

ROOT = Path(__file__).parent.parent
SOURCE_VERSION = re.search(r'__version__ = "([^"]+)"',
                           (ROOT / "src/vpartcollect/__init__.py").read_text())


def test_version_is_one_value_in_code_setup_cfg_and_debian_changelog() -> None:
    assert SOURCE_VERSION is not None
    version = SOURCE_VERSION.group(1)
    assert vpartcollect.__version__ == version
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    assert setup["metadata"]["version"] == "attr: vpartcollect.__version__"
    first = (ROOT / "debian/changelog").read_text().splitlines()[0]
    found = re.match(r"vpartcollect \(([^)]+)\) ", first)
    assert found is not None, first
    assert found.group(1) == version  # a native package: no Debian revision


def test_version_flag_prints_the_version() -> None:
    for flag in ("--version", "-V"):
        res = cli(flag)
        assert res.returncode == 0, res.stderr
        assert res.stdout == f"vpartcollect {vpartcollect.__version__}\n"


def _man_text() -> str:
    """The man page's words, roff escapes of hyphens undone."""
    return (ROOT / "doc/vpartcollect.1").read_text().replace("\\-", "-")


def test_man_page_names_every_command_and_option() -> None:
    man = _man_text()
    assert isinstance(cli_group, click.Group)
    missing = []
    for name, command in cli_group.commands.items():
        if not re.search(rf"\b{re.escape(name)}\b", man):
            missing.append(name)
        for param in command.params:
            if isinstance(param, click.Option):
                for opt in [*param.opts, *param.secondary_opts]:
                    if opt.startswith("--") and not re.search(rf"{re.escape(opt)}\b", man):
                        missing.append(f"{name} {opt}")
    assert missing == []


def test_example_configuration_keys_are_real_and_valid() -> None:
    """Every commented-out setting of the shipped example loads once uncommented, and the
    file as shipped sets nothing (so the packaged service waits for a real one)."""
    text = (ROOT / "contrib/vpartcollect.toml").read_text()
    assert tomllib.loads(text) == {}
    settings = [line[2:] for line in text.splitlines() if re.match(r"# [a-z_]+ = ", line)]
    values = tomllib.loads("\n".join(settings))
    assert len(values) >= 10 and "graphite" in values
    cfg = config_mod.build(values)
    assert cfg.instances == values["instances"]
