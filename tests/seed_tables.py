"""The seed's four example tables (collectd's docs/README.virt.md), shared by the tests
of the partition rule and of ``plan``."""

from __future__ import annotations

from vpartcollect.partition import REASON_ADOPTED, REASON_MATCH

M, A = REASON_MATCH, REASON_ADOPTED

# (instances, [(domain, tag, instance, reason)]) exactly as docs/README.virt.md prints them
# (its example two says "rag match" for domain-F: a typo for "tag match").
Row = tuple[str, str | None, int, str]
SEED_EXAMPLES: dict[str, tuple[int, list[Row]]] = {
    "one": (5, [("domain-A", "virt-0", 0, M), ("domain-B", "virt-1", 1, M),
                ("domain-C", "virt-2", 2, M), ("domain-D", "virt-3", 3, M),
                ("domain-E", "virt-4", 4, M), ("domain-F", "virt-0", 0, M),
                ("domain-G", "virt-1", 1, M), ("domain-H", "virt-2", 2, M),
                ("domain-I", "virt-3", 3, M), ("domain-J", "virt-4", 4, M)]),
    "two": (3, [("domain-A", "virt-0", 0, M), ("domain-B", "virt-1", 1, M),
                ("domain-C", "virt-2", 2, M), ("domain-D", "virt-3", 0, A),
                ("domain-E", "virt-4", 0, A), ("domain-F", "virt-0", 0, M),
                ("domain-G", "virt-1", 1, M), ("domain-H", "virt-2", 2, M),
                ("domain-I", "virt-3", 0, A), ("domain-J", "virt-4", 0, A)]),
    "three": (5, [("domain-A", "virt-0", 0, M), ("domain-B", "virt-1", 1, M),
                  ("domain-C", "virt-2", 2, M), ("domain-D", "virt-0", 0, M),
                  ("domain-E", "virt-1", 1, M), ("domain-F", "virt-2", 2, M),
                  ("domain-G", "virt-0", 0, M), ("domain-H", "virt-1", 1, M),
                  ("domain-I", "virt-2", 2, M), ("domain-J", "virt-0", 0, M)]),
    "four": (5, [("domain-A", "virt-0", 0, M), ("domain-B", "virt-1", 1, M),
                 ("domain-C", "virt-2", 2, M), ("domain-D", "virt-0", 0, M),
                 ("domain-E", None, 0, A), ("domain-F", None, 0, A),
                 ("domain-G", None, 0, A), ("domain-H", None, 0, A),
                 ("domain-I", None, 0, A), ("domain-J", None, 0, A)]),
}
