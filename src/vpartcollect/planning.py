"""``vpartcollect plan``: who samples what, as the seed's tables show it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import libvirt

from vpartcollect.config import Config
from vpartcollect.daemon import printable
from vpartcollect.libvirt_conn import error_text, open_readonly, quiet_libvirt
from vpartcollect.preflight import PreflightError
from vpartcollect.worker.inventory import Inventory

REASON_EXCLUDED = "excluded by include/exclude"


@dataclass(frozen=True)
class PlanRow:
    """One domain's line of the plan."""

    domain: str
    uuid: str
    tag: str | None
    instance: int | None
    reason: str

    def as_dict(self) -> dict[str, object]:
        """The JSON object of ``plan --json``."""
        return asdict(self)


def rows_for(domains: list[tuple[str, str, str | None]], cfg: Config) -> list[PlanRow]:
    """Plan rows for (name, uuid, tag) triples: pure, so the rule is tested without libvirt."""
    rows = []
    for name, uuid, tag in domains:
        owner = cfg.sampled_by(name, tag)
        if owner is None:
            rows.append(PlanRow(name, uuid, tag, None, REASON_EXCLUDED))
        else:
            rows.append(PlanRow(name, uuid, tag, owner.instance, owner.reason))
    return rows


def plan_rows(cfg: Config) -> list[PlanRow]:
    """Connect read-only and plan every running domain."""
    quiet_libvirt()
    try:
        conn = open_readonly(cfg.connect)
        try:
            running = Inventory(conn, cfg.refresh_interval, want_devices=False).running()
        finally:
            conn.close()
    except libvirt.libvirtError as exc:
        raise PreflightError(f"cannot read domains from {cfg.connect}: "
                             f"{error_text(exc)}") from None
    return rows_for([(d.name, d.uuid, d.tag) for d in running], cfg)


def render_table(table: Sequence[tuple[str, ...]]) -> str:
    """Fixed-width columns, two spaces apart; the last column is not padded."""
    table = [tuple(printable(cell) for cell in row) for row in table]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    return "".join("  ".join([*(f"{c:<{w}}" for c, w in zip(row, widths, strict=False)),
                              row[-1]]) + "\n" for row in table)


def render_plan(rows: list[PlanRow]) -> str:
    """A fixed-width table: domain, tag, instance, reason."""
    table = [("DOMAIN", "TAG", "INSTANCE", "REASON")]
    table += [(r.domain, r.tag or "-", "-" if r.instance is None else str(r.instance), r.reason)
              for r in rows]
    return render_table(table)
