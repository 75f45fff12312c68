"""The test driver's oracle: its cpu time is the wall clock, so every cpu rate is 1e9 ns/s.

Checks shared by the tests that run the collector on test-driver domains (in-process,
or served by a real libvirtd): values against the oracle, never only presence.
"""

from __future__ import annotations

from collections import Counter

Line = tuple[str, float, float]
TRUTH = 1e9  # ns of cpu per second: the test driver's clock


def check_truth(lines: list[Line], stderr: str, healthy: list[str]) -> dict[str, int]:
    """The invariants of every run; returns, per domain, the ticks with a cpu rate."""
    twice = [k for k, n in Counter((p, ts) for p, _, ts in lines).items() if n > 1]
    assert not twice, f"written twice: {twice[:5]}"
    wrong = [(p, v, ts) for p, v, ts in lines
             if p.endswith(".virt.virt_cpu_total") and abs(v / TRUTH - 1) > 0.03]
    assert not wrong, f"cpu rates off the truth: {wrong[:5]}\n{stderr[-3000:]}"
    rates = [v / TRUTH - 1 for p, v, _ in lines if p.endswith(".virt.virt_cpu_total")]
    print(f"{len(rates)} cpu rates, worst {max(map(abs, rates), default=0):.2%} off the truth; "
          f"{len(lines)} lines, none twice")
    stamps = sorted({int(ts) for p, _, ts in lines if ".virt." in p})
    window = range(stamps[1], stamps[-1])
    rated = {d: {int(ts) for p, _, ts in lines if p == f"{d}.virt.virt_cpu_total"}
             for d in healthy}
    for domain in healthy:
        missing = [t for t in window if t not in rated[domain]]
        assert not missing, f"{domain} has no cpu rate at {missing}\n{stderr[-3000:]}"
    return {d: len(r) for d, r in rated.items()}
