"""Skipping a test that needs a real part (root, a cgroup hierarchy, a kernel feature),
honestly: on a developer's machine without it the test is skipped with why; under
``CI=true`` (where every real part must be there) the same gap fails the test, so a
missing part cannot pass as green."""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    """Whether this run is CI's (``CI=true``, as GitHub Actions and most CIs set it)."""
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def require_or_fail(present: object, what: str) -> None:
    """Skip (fail under CI) unless ``present`` is true; ``what``: the part that is missing."""
    if present:
        return
    if in_ci():
        pytest.fail(f"CI must have this real part: {what}")
    pytest.skip(what)
